"""Fixtures shared across the test tree (tests/ mirrors ftcli/: tests/engine tests ftcli/engine, ...).

Helper modules live in tests/helpers (importable as `helpers.*`: pytest puts tests/ on sys.path, see
pyproject's [tool.pytest.ini_options]). Markers: `gpu` (needs CUDA; run on the GPU machine with
`pytest -m gpu`), `slow` (more than a few seconds on 2 CPU cores).
"""

from __future__ import annotations

import os

import pytest

from helpers.runs import REPO


@pytest.fixture
def interpret(monkeypatch):
    """Run Triton kernels under the CPU interpreter for this test only (kernels are built at first launch)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


interpreter = interpret  # the name the patch tests ask for


@pytest.fixture
def no_interpreter(monkeypatch):
    """No Triton on the CPU: `auto` kernels fall back to the plain-PyTorch references."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.fixture(scope="session")
def repo():
    """The repository root (recipes/, templates/, docs/)."""
    return REPO


@pytest.fixture(scope="session")
def in_ci() -> bool:
    """Under CI=true only `gpu` tests may skip."""
    return os.environ.get("CI") == "true"
