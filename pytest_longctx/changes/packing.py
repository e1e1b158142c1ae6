"""Document packing as a change: the same retrieved documents, ordered so the strongest sit at the prompt's ends."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .base import Change, ChangeError, PromptPlan
from .prompt_layout import Packing, arrange, parse_packing


@dataclass(frozen=True)
class PackingChange(Change, kind="packing", order=70, keys=("packing",), stage="prompt", changes_tokens=True, computation=False):
    """`packing: edge`: the multi-document families' documents in edge order (see prompt_layout.edge_order)."""

    packing: Packing

    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> PackingChange | None:
        packing = parse_packing(side["packing"])  # a bad value raises a LayoutError, a ChangeError
        return None if packing == "given" else cls(packing)

    def record(self) -> dict[str, Any]:
        return {"packing": self.packing}

    def check(self, side: Any, sweep: Any) -> None:
        from ..tasks import FAMILIES

        if not any(FAMILIES[t.family].arranges for t in sweep.tasks):
            raise ChangeError("packing", "needs a task with documents to arrange", "add multi_doc_qa to sweep.tasks")

    def prompt(self, plan: PromptPlan, family: Any) -> PromptPlan:
        # A family without documents keeps its prompt (check() made sure some family of the sweep has them).
        return replace(plan, arrange=arrange(self.packing)) if family.arranges else plan


CHANGE = PackingChange
