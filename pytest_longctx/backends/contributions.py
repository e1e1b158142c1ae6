"""What one side's changes contribute to an in-process generation, folded once per side, and the cache they plan."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..changes.base import CachePlan, Change
    from ..gate.spec import VariantSpec


@dataclass(frozen=True)
class Applied:
    """What one side's changes contribute to a generation, folded once per side."""

    changes: tuple[Change, ...]
    cache: CachePlan
    reuse: str  # "any" | "exact" | "never", the strictest of the changes'
    drafts: bool
    batch: bool
    decode_delay: float
    kv_copies: int

    @classmethod
    def of(cls, variant: VariantSpec) -> Applied:
        changes = variant.changes
        rules = {str(c.reuse) for c in changes}
        return cls(
            changes=changes,
            cache=variant.cache_plan(),
            reuse="never" if "never" in rules else "exact" if "exact" in rules else "any",
            drafts=all(c.drafts for c in changes),
            batch=all(c.batch for c in changes),
            decode_delay=sum(c.decode_delay() for c in changes),
            kv_copies=math.prod(c.kv_copies() for c in changes),
        )

    def before_prompt(self, model: Any) -> None:
        for change in self.changes:
            change.before_prompt(model)

    def after_prefill(self, cache: Any) -> None:
        for change in self.changes:
            change.after_prefill(cache)

    def kv_tokens(self, prompt: int, new: int) -> int:
        """Tokens the analytic formula counts: the fewest any change leaves held (the last new token has no K/V)."""
        held = [n for n in (c.kv_tokens(prompt, new) for c in self.changes) if n is not None]
        return min(held, default=prompt + max(new - 1, 0))


def build_cache(plan: CachePlan, config: Any, *, answers_only: bool = False) -> Any:
    """A fresh cache for one sequence as `plan` asks: a change's own factory, a window, or the (quantized) full one."""
    from .kv_cache import make_cache

    if plan.factory is not None:
        return plan.factory(config)
    if plan.window is not None:
        from ..changes.window import make_window_cache

        return make_window_cache(plan.window, config, kv_cache_dtype=plan.kv_cache_dtype, kv_scale=plan.kv_scale)
    return make_cache(plan.kv_cache_dtype, config, kv_scale=plan.kv_scale, answers_only=answers_only)
