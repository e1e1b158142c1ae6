"""Model precision as a change: the side's weights and activations in another dtype (e.g. bfloat16 vs float32)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from ..gate.limits import shown
from .base import Change, ChangeError, LoadPlan

ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class Precision(Change):
    """`dtype:` the side loads its model in this dtype (one model per distinct dtype)."""

    kind = "precision"
    order = 20
    keys = ("dtype",)
    stage = "load"

    dtype: ModelDtype

    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> Precision | None:
        value = side.get("dtype")
        if value is None:
            return None
        if value not in get_args(ModelDtype):
            raise ChangeError("dtype", f"{shown(value)} is not supported", f"use one of: {', '.join(get_args(ModelDtype))}")
        return cls(value)

    def record(self) -> dict[str, Any]:
        return {"dtype": self.dtype}

    def load(self, plan: LoadPlan) -> LoadPlan:
        return replace(plan, model=replace(plan.model, dtype=self.dtype))


CHANGE = Precision
