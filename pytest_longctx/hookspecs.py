"""Hooks pytest-longctx calls on plugins and conftest files (pluggy hookspecs, added to pytest's plugin manager)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


@pytest.hookspec
def pytest_longctx_register_changes(register: Callable[[type[Any]], Any]) -> None:
    """Register change kinds that gate sides may use by their keys, before any gate file is read.

    Call `register(MyChange)` for each `pytest_longctx.changes.Change` subclass (it needs a `kind` name and the
    gate `keys` it reads). Implement this in a plugin or a root conftest.py::

        def pytest_longctx_register_changes(register):
            register(KeepHeavyHitters)

    A kind, or a key, that is already registered is an error naming both.
    """
