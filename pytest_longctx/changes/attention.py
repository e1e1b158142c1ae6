"""The attention implementation as a change: the same model through another kernel (sdpa vs eager)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal, get_args

from .base import LoadChoice, LoadPlan

AttnImplementation = Literal["sdpa", "eager"]


@dataclass(frozen=True)
class AttentionImplementation(LoadChoice, kind="attn_implementation", order=30, keys=("attn_implementation",)):
    """`attn_implementation:` set on the config when the side's model loads."""

    choices: ClassVar[tuple[str, ...]] = get_args(AttnImplementation)

    value: AttnImplementation

    def load(self, plan: LoadPlan) -> LoadPlan:
        return replace(plan, attn_implementation=self.value)


CHANGE = AttentionImplementation
