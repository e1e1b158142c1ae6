"""The error a change's settings raise: which key (dotted from the side), what is wrong, how to fix it."""

from __future__ import annotations

from typing import Any


class ChangeError(ValueError):
    """A change's setting that cannot be used; `key` is dotted from the side ("attention.window")."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(f"key '{key}': {problem}. Fix: {fix}.")
        self.key, self.problem, self.fix = key, problem, fix


def one_of(value: Any, key: str, options: tuple[str, ...]) -> Any:
    """`value` when it is one of `options`, else a ChangeError naming `key` and the choices."""
    if isinstance(value, str) and value in options:
        return value
    from ..gate.limits import shown

    raise ChangeError(key, f"{shown(value)} is not supported", f"use one of: {', '.join(options)}")
