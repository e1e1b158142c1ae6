"""The attention implementation as a change: the same model through another kernel (sdpa vs eager)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from .base import Change, LoadPlan
from .errors import one_of

AttnImplementation = Literal["sdpa", "eager"]


@dataclass(frozen=True)
class AttentionImplementation(Change, kind="attn_implementation", order=30, keys=("attn_implementation",), stage="load"):
    """`attn_implementation:` set on the config when the side's model loads."""

    implementation: AttnImplementation

    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> AttentionImplementation | None:
        value = side.get("attn_implementation")
        return None if value is None else cls(one_of(value, "attn_implementation", get_args(AttnImplementation)))

    def record(self) -> dict[str, Any]:
        return {"attn_implementation": self.implementation}

    def load(self, plan: LoadPlan) -> LoadPlan:
        return replace(plan, attn_implementation=self.implementation)


CHANGE = AttentionImplementation
