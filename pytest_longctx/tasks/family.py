"""What declares a task family: its options with defaults and bounds, its builder, and the errors options raise."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..gate.limits import shown
from .prompt import TaskPrompt


class TaskError(ValueError):
    """A task entry that cannot be used: `key` is dotted relative to the entry, with the problem and the fix."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(f"{key}: {problem}; {fix}" if key else f"{problem}; {fix}")
        self.key = key
        self.problem = problem
        self.fix = fix


@dataclass(frozen=True)
class Option:
    """One option of a family: a whole number within [low, high], or one of `choices`."""

    name: str
    default: int | str
    choices: tuple[str, ...] = ()
    low: int = 0
    high: int = 1_000

    def check(self, value: Any) -> int | str:
        """The value if valid, else a TaskError naming the option."""
        if self.choices:
            if value not in self.choices:
                raise TaskError(self.name, f"{shown(value)} is not supported", f"use one of: {', '.join(self.choices)}")
            return str(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TaskError(self.name, f"expected a whole number, got {shown(value)}", f"write e.g. {self.name}: {self.default}")
        if not self.low <= value <= self.high:
            raise TaskError(self.name, f"{shown(value)} is out of range", f"use a value from {self.low} to {self.high}")
        return value


@dataclass(frozen=True)
class Family:
    """A task family: `build(tokenizer, *, length, depth, seed, **options)` makes its TaskPrompt.

    `uses_depth` is False where the position of the evidence is not swept (aggregation over the whole
    context, chains spread through it); `arranges` is True where `build` takes `arrange=` (documents), and
    `takes_history` where it takes `history=` (a conversation a history budget can cut).
    """

    name: str
    summary: str
    options: tuple[Option, ...]
    build: Callable[..., TaskPrompt]
    uses_depth: bool = True
    arranges: bool = False
    takes_history: bool = False  # `build` takes `history=` (a chat-history budget)

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)
