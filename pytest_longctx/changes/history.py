"""The chat-history budget as a change: a conversation cut to its newest whole turns that fit a token budget."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .base import Change, ChangeError, PromptPlan
from .prompt_layout import HistoryBudget, parse_history


@dataclass(frozen=True)
class HistoryChange(Change, kind="history", order=80, keys=("history",), stage="prompt", changes_tokens=True, computation=False):
    """`history: {budget: N, policy: newest_first}`, applied to the conversation families' chat before rendering.

    A miss whose fact's turn the budget dropped is filed as `cut_from_history`, the budget's loss."""

    budget: HistoryBudget

    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> HistoryChange | None:
        raw = side.get("history")  # a bad value raises parse_history's LayoutError, a ChangeError
        return None if raw is None else cls(parse_history(raw))

    def record(self) -> dict[str, Any]:
        return {"history": {"budget": self.budget.budget, "policy": self.budget.policy}}

    def describe(self) -> tuple[tuple[str, str], ...]:
        return (("history", f"budget {self.budget.budget} tokens, {self.budget.policy}"),)

    def check(self, side: Any, sweep: Any) -> None:
        from ..tasks import FAMILIES

        if not any(FAMILIES[t.family].takes_history for t in sweep.tasks):
            raise ChangeError("history", "needs a task with a chat history", "add conversation to sweep.tasks")

    def prompt(self, plan: PromptPlan, family: Any) -> PromptPlan:
        return replace(plan, history=self.budget) if family.takes_history else plan


CHANGE = HistoryChange
