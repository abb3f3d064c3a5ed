"""`relay verify` against the containers: the checklist a deploy ends with, green on the image as Cloud
Run runs it. (pytest takes this file before test_image.py, whose last tests stop the containers.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.image.conftest import ImageStack


def test_relay_verify_passes_every_check_against_the_containers(image_stack: ImageStack) -> None:
    stack = image_stack.stack
    result = subprocess.run(
        [sys.executable, "-m", "replicate_relay", "verify", "--timeout", "90"],
        capture_output=True,
        text=True,
        env={**os.environ, **stack.client_env},
        timeout=400,
        check=False,
    )
    print(result.stdout)  # the checklist, with pytest -s
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(re.findall(r"^  ✓ ", result.stdout, flags=re.MULTILINE)) == 6, result.stdout
    assert re.search(r"All 6 checks passed in [\d.]+ s\.", result.stdout)
