"""Settings shared by every test suite: the hypothesis profiles.

HYPOTHESIS_PROFILE chooses one: "dev" (the default: quick, for a local run) or "ci" (more examples, no deadline
on a shared runner, and a reproduction blob printed with any failure). A test's own `@settings` still wins.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", max_examples=500, deadline=None, derandomize=False, print_blob=True)
settings.register_profile("dev", max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
