"""Model precision as a change: the side's weights and activations in another dtype (e.g. bfloat16 vs float32)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, get_args

from .base import LoadChoice, LoadPlan
from .model import ModelDtype


@dataclass(frozen=True)
class Precision(LoadChoice, kind="precision", order=20, keys=("dtype",)):
    """`dtype:` the side loads its model in this dtype (one model per distinct dtype)."""

    choices: ClassVar[tuple[str, ...]] = get_args(ModelDtype)

    value: ModelDtype

    def load(self, plan: LoadPlan) -> LoadPlan:
        return replace(plan, model=replace(plan.model, dtype=self.value))


CHANGE = Precision
