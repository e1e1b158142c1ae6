"""Model precision as a change: the side's weights and activations in another dtype (e.g. bfloat16 vs float32)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from .base import Change, LoadPlan
from .errors import one_of

ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]


@dataclass(frozen=True)
class Precision(Change, kind="precision", order=20, keys=("dtype",), stage="load"):
    """`dtype:` the side loads its model in this dtype (one model per distinct dtype)."""

    dtype: ModelDtype

    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> Precision | None:
        value = side.get("dtype")
        return None if value is None else cls(one_of(value, "dtype", get_args(ModelDtype)))

    def record(self) -> dict[str, Any]:
        return {"dtype": self.dtype}

    def load(self, plan: LoadPlan) -> LoadPlan:
        return replace(plan, model=replace(plan.model, dtype=self.dtype))


CHANGE = Precision
