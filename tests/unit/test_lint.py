"""Lint and types are habits: ruff and mypy pass with the settings in pyproject.toml ([tool.ruff], [tool.mypy])."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m TOOL` from this interpreter's environment, or skip (fail under CI) where it is not installed."""
    if importlib.util.find_spec(tool) is None:
        message = f"{tool} is not installed in this environment; `pip install -e '.[dev]'` installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: the lint must run in CI)")
        pytest.skip(message)
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_ruff_finds_nothing():
    result = _run("ruff", "check", "--no-fix", "pytest_longctx", "tests", "benchmarks", "examples")

    assert result.returncode == 0, f"ruff check (settings: pyproject.toml [tool.ruff]):\n{result.stdout}{result.stderr}"


def test_mypy_finds_nothing():
    result = _run("mypy", "pytest_longctx")

    assert result.returncode == 0, f"mypy (settings: pyproject.toml [tool.mypy]):\n{result.stdout}{result.stderr}"
