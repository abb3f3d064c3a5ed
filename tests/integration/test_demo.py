"""`make run`'s demo, end to end: `relay dev --demo --exit-after-demo` on free ports.

The README quotes this output (run with `pytest -s` to see it): the signed lifecycle, the three
submitted predictions ending where expected (the third after the reconciler found its lost final
webhook), and the trace of the two-file job's final webhook.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from replicate_relay.devstack.processes import free_port
from replicate_relay.devstack.stack import REPO_ROOT

PORT_FLAGS = (
    "--pubsub-port",
    "--firestore-port",
    "--storage-port",
    "--receiver-port",
    "--job-status-port",
    "--archive-outputs-port",
    "--reconciler-port",
    "--status-page-port",
    "--simulator-port",
)


def test_make_runs_demo_ends_every_job_where_expected_and_draws_the_trace(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "replicate_relay", "dev", "--demo", "--exit-after-demo"]
    for flag in PORT_FLAGS:
        argv += [flag, str(free_port())]
    argv += ["--log-dir", str(tmp_path / "logs"), "--telemetry-dir", str(tmp_path / "telemetry")]
    # The session's stack exports its emulator hosts; the demo must find its own.
    env = {key: value for key, value in os.environ.items() if not key.endswith("_EMULATOR_HOST")}
    done = subprocess.run(  # noqa: S603 - this interpreter and the project's own command line
        argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    output = done.stdout
    (tmp_path / "demo.txt").write_text(output)
    print(output)  # shown with -s: the README quotes it
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n{output[-3000:]}"
    assert "Demo finished: every job ended where expected." in output
    for section in ("1. A signed sample lifecycle", "2. Three predictions submitted", "3. The trace of job"):
        assert section in output
    assert "POST / [receiver]" in output
    assert "process archive-outputs [archive-outputs]" in output
    assert "Stopped every process of the local stack." in output
