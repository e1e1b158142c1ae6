"""The attention implementation as a change: the same model through another kernel (sdpa vs eager)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from ..gate.limits import shown
from .base import Change, ChangeError, LoadPlan

AttnImplementation = Literal["sdpa", "eager"]


@dataclass(frozen=True)
class AttentionImplementation(Change):
    """`attn_implementation:` set on the config when the side's model loads."""

    kind = "attn_implementation"
    order = 30
    keys = ("attn_implementation",)
    stage = "load"

    implementation: AttnImplementation

    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> AttentionImplementation | None:
        value = side.get("attn_implementation")
        if value is None:
            return None
        if value not in get_args(AttnImplementation):
            raise ChangeError("attn_implementation", f"{shown(value)} is not supported",
                              f"use one of: {', '.join(get_args(AttnImplementation))}")
        return cls(value)

    def record(self) -> dict[str, Any]:
        return {"attn_implementation": self.implementation}

    def load(self, plan: LoadPlan) -> LoadPlan:
        return replace(plan, attn_implementation=self.implementation)


CHANGE = AttentionImplementation
