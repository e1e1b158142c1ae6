"""The error a change's settings raise: which key (dotted from the side), what is wrong, how to fix it."""

from __future__ import annotations

from collections.abc import Mapping
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


def settings_mapping(raw: Any, key: str, allowed: tuple[str, ...], example: str, *,
                     error: type[ChangeError] = ChangeError) -> Mapping[str, Any]:
    """`raw` when it is a mapping of only `allowed` keys, else `error` naming `key` (or the unknown `key.name`);
    `example` is the fix for a value that is not a mapping at all ("write history: {budget: 4096}")."""
    if not isinstance(raw, Mapping):
        raise error(key, f"expected a mapping, got {type(raw).__name__}", example)
    for name in raw:
        if name not in allowed:
            raise error(f"{key}.{name}", "unknown key", f"use one of: {', '.join(allowed)}")
    return raw
