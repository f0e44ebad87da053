"""Tests that run generated code need a working bubblewrap: skipped on a machine without it, never under CI=true."""

import os

import pytest

from ftcli.rewards import isolation

PROBLEM = isolation.probe()
needs_sandbox = pytest.mark.skipif(PROBLEM is not None and os.environ.get("CI") != "true",
                                   reason=f"no working bubblewrap here ({PROBLEM}); `apt-get install bubblewrap`")
