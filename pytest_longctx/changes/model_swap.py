"""A model swap as a change: the side runs another checkpoint (a new model or a fine-tune) on the same prompts."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .base import Change, LoadPlan
from .model import ModelSpec, parse_model


# changes_tokens: another tokenizer
# computation: other weights: the weights fingerprint tells the sides apart, not the no-op guard
@dataclass(frozen=True)
class ModelSwap(
    Change, kind="model_swap", order=10, keys=("model",), stage="load", changes_tokens=True, computation=False, in_process_only=False,
):
    """`model:` on a side: its own weights (and tokenizer, so the sides pair on the cell's content, not its ids)."""

    model: ModelSpec

    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> ModelSwap | None:
        return None if side.get("model") is None else cls(parse_model(side["model"], "model"))

    def record(self) -> dict[str, Any]:
        return {"model": dataclasses.asdict(self.model)}

    def describe(self) -> tuple[tuple[str, str], ...]:
        extras = [f"{k} {getattr(self.model, k)}" for k in ("dtype", "device") if getattr(self.model, k) != "auto"]
        extras += ["trust_remote_code"] if self.model.trust_remote_code else []
        return (("model", self.model.ref + (f" ({', '.join(extras)})" if extras else "")),)

    def load(self, plan: LoadPlan) -> LoadPlan:
        return replace(plan, model=self.model)


CHANGE = ModelSwap
