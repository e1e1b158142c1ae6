"""Walking parsed gate YAML key by key: typed values within their limits, or a GateError naming file, key and fix."""

from __future__ import annotations

import math
import unicodedata
from typing import Any

from .limits import (
    MAX_INTEGER,
    MAX_NAME_CHARS,
    MAX_STRING_CHARS,
    NAME_PATTERN,
    shown,
    shown_key,
)


class GateError(ValueError):
    """A gate file that cannot be used; the message names the file, the key and the fix."""


def gate_error(source: str, key: str, problem: str, fix: str) -> GateError:
    """The one message shape: `gates/x.yaml: key 'sweep.lengths': <problem>. Fix: <fix>.`"""
    where = f"key '{key}'" if key else "top level"
    return GateError(f"{source}: {where}: {problem}. Fix: {fix}.")


def _identity(value: Any) -> tuple[str, Any]:
    """What makes two list entries the same: numbers by value (1 and 1.0), strings as they are, anything else
    by its bounded repr (never the whole of a large value)."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, str):
        return ("str", value)
    return ("other", shown(value))


class Reader:
    """Walks the parsed YAML, so every error can name the file and the dotted key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str, fix: str) -> GateError:
        return gate_error(self.source, key, problem, fix)

    def mapping(self, value: Any, key: str, allowed: dict[str, str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {type(value).__name__}", f"write {key or 'the file'} as `key: value` lines")
        for name in value:
            if name not in allowed:
                known = ", ".join(allowed)
                shown_name = shown_key(name)
                raise self.fail(f"{key}.{shown_name}" if key else shown_name, "unknown key", f"use one of: {known}")
        return value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"expected a non-empty string, got {shown(value)}", "give a name in quotes if needed")
        if len(value) > MAX_STRING_CHARS:
            raise self.fail(key, f"is {len(value):,} characters long", f"use at most {MAX_STRING_CHARS:,}")
        bad = next((c for c in value if unicodedata.category(c) == "Cc"), None)
        if bad is not None:
            raise self.fail(key, f"contains the control character {bad!r} in {shown(value)}",
                            "write it on one line, without control characters")
        return value

    def name(self, value: Any, key: str) -> str:
        """A name that becomes part of node ids and file names: a safe identifier, short, no path in it."""
        text = self.string(value, key)
        fix = (f"use letters, digits, '.', '_' and '-', starting with a letter or digit, at most {MAX_NAME_CHARS} characters "
               "(e.g. fp8-kv-cache)")
        if len(text) > MAX_NAME_CHARS:
            raise self.fail(key, f"{shown(text)} is {len(text)} characters long", fix)
        if not NAME_PATTERN.fullmatch(text):
            raise self.fail(key, f"{shown(text)} is not a plain name (node ids split on '::', file names on '/')", fix)
        if ".." in text:
            raise self.fail(key, f"{shown(text)} contains '..'", fix)
        return text

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {shown(value)}", "write true or false")
        return value

    def number(self, value: Any, key: str, *, low: float | None = None, high: float | None = None) -> float:
        """A finite number in [low, high]; .nan and .inf are refused whatever the bounds."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"expected a number, got {shown(value)}", "write a plain number such as 1.05")
        try:
            number = float(value)
        except OverflowError:  # an int beyond float's range
            number = math.inf
        if not math.isfinite(number):
            raise self.fail(key, f"{shown(value)} is not a finite number", f"write a plain number in [{low}, {high}]")
        if (low is not None and number < low) or (high is not None and number > high):
            raise self.fail(key, f"{shown(value)} is out of range", f"use a value in [{low}, {high}]")
        return number

    def integer(self, value: Any, key: str, *, low: int = 0, high: int = MAX_INTEGER) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"expected an integer, got {shown(value)}", "write a whole number")
        if value < low:
            raise self.fail(key, f"{shown(value)} is below {low}", f"use an integer >= {low}")
        if value > high:
            raise self.fail(key, f"{shown(value)} is above the limit {high:,}", f"use an integer <= {high:,} (see docs/limits.md)")
        return value

    def choice(self, value: Any, key: str, options: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in options:
            raise self.fail(key, f"{shown(value)} is not supported", f"use one of: {', '.join(options)}")
        return value

    def listing(self, value: Any, key: str, *, most: int | None = None) -> list[Any]:
        if not isinstance(value, list) or not value:
            raise self.fail(key, f"expected a non-empty list, got {shown(value)}", f"write {key}: [a, b, ...]")
        if most is not None and len(value) > most:
            raise self.fail(key, f"has {len(value):,} entries", f"list at most {most:,} (see docs/limits.md)")
        if len(set(map(_identity, value))) != len(value):
            raise self.fail(key, "contains duplicates", "list each value once")
        return value
