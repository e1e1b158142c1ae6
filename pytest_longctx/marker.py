"""The `@pytest.mark.longctx(lengths=..., depths=..., seeds=...)` marker: its arguments validated into cells."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MARKER = "longctx"
MARKER_HELP = (
    "longctx(lengths=[...], depths=[0.5], seeds=[0]): run the test once per (length, depth, seed) cell; "
    "the cell reaches it as the `longctx_cell` fixture and sets the `haystack` fixture's defaults"
)
ARGUMENTS = ("lengths", "depths", "seeds")


class MarkerError(ValueError):
    """Marker arguments that cannot make cells; the message says which argument and how to fix it."""


@dataclass(frozen=True)
class LongctxCell:
    """One cell of a marked test: the prompt length in tokens, the needle depth (0.0 first line, 1.0 last), a seed."""

    length: int
    depth: float
    seed: int

    @property
    def id(self) -> str:
        """`4096-d50-s0`: the depth in percent."""
        return f"{self.length}-d{self.depth * 100:g}-s{self.seed}"


def cells_from_marker(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[LongctxCell]:
    """Validate the marker's arguments; return its cells, lengths outermost, then depths, then seeds."""
    if args:
        raise MarkerError(f"takes keyword arguments only, got positional {list(args)!r}; "
                          "write longctx(lengths=[...], depths=[...], seeds=[...])")
    unknown = sorted(set(kwargs) - set(ARGUMENTS))
    if unknown:
        raise MarkerError(f"unknown argument {unknown[0]!r}; use {', '.join(ARGUMENTS)}")
    if "lengths" not in kwargs:
        raise MarkerError("needs lengths=[...], the prompt lengths in tokens, e.g. lengths=[4096]")
    lengths = _values(kwargs["lengths"], "lengths")
    depths = _values(kwargs.get("depths", [0.5]), "depths")
    seeds = _values(kwargs.get("seeds", [0]), "seeds")
    for length in lengths:
        if not _is_int(length) or length <= 0:
            raise MarkerError(f"lengths: {length!r} is not a positive number of tokens")
    for depth in depths:
        if isinstance(depth, bool) or not isinstance(depth, (int, float)):
            raise MarkerError(f"depths: {depth!r} is not a number")
        if not 0.0 <= depth <= 1.0:
            raise MarkerError(f"depths: {depth!r} is outside [0.0, 1.0] (0.0 puts the needle on the first line, 1.0 on the last)")
    for seed in seeds:
        if not _is_int(seed) or seed < 0:
            raise MarkerError(f"seeds: {seed!r} is not a non-negative integer")
    return [LongctxCell(int(n), float(d), int(s)) for n in lengths for d in depths for s in seeds]


def _values(raw: Any, name: str) -> list[Any]:
    if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Sequence):
        raise MarkerError(f"{name} must be a list, got {raw!r}; write {name}=[{raw!r}]")
    values = list(raw)
    if not values:
        raise MarkerError(f"{name} is empty; give at least one value")
    if len({repr(v) for v in values}) != len(values) or len(set(values)) != len(values):
        raise MarkerError(f"{name} lists a value twice ({values!r}); list each once")
    return values


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
