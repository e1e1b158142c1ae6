"""A team's own KV-cache eviction, gated as a pytest-longctx change: keep the attention sinks, the most recent
tokens and, up to a budget, the tokens whose keys have the smallest L2 norm.

Why key norms: keys with a small norm draw the most attention (Devoto et al., 2024, "A Simple and Effective L2
Norm-Based Strategy for KV Cache Compression"), so the norm stands in for attention scores that SDPA never
materialises. The eviction runs once, right after the prompt's prefill (as NVIDIA's kvpress "presses" do); the
answer's own tokens are then appended as usual.

Usable two ways (both shown in this folder):
- named in a gate side: `change: {python: "key_norm_eviction:KeyNormEviction", options: {budget: 512}}`;
- registered by conftest.py through `pytest_longctx_register_changes`, then used by its key:
  `key_norm_eviction: {budget: 512}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pytest_longctx.changes import Change, ChangeError


@dataclass(frozen=True)
class KeyNormEviction(Change):
    kind = "key_norm_eviction"
    keys = ("key_norm_eviction",)
    stage = "cache"
    reuse = "never"  # a cache evicted for one prompt holds no clean prefix of another
    drafts = False

    budget: int = 512  # prompt tokens kept after prefill, sinks and recent ones included
    sink_tokens: int = 4
    recent: int = 128

    def __post_init__(self) -> None:
        for name in ("budget", "sink_tokens", "recent"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        if self.sink_tokens + self.recent > self.budget:
            raise ValueError(f"sink_tokens + recent ({self.sink_tokens + self.recent}) exceed the budget ({self.budget})")

    # ---- as a registered kind (conftest.py)
    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> KeyNormEviction | None:
        options = side.get("key_norm_eviction")
        if options is None:
            return None
        if not isinstance(options, Mapping):
            raise ChangeError("key_norm_eviction", "expected a mapping", "write key_norm_eviction: {budget: 512}")
        try:
            return cls(**options)
        except (TypeError, ValueError) as exc:
            raise ChangeError("key_norm_eviction", str(exc), "give budget, sink_tokens and recent as whole numbers") from None

    def record(self) -> dict[str, Any]:
        return {"key_norm_eviction": asdict(self)}

    def describe(self) -> tuple[tuple[str, str], ...]:
        return (("kv eviction", f"key norm: {self.budget} tokens ({self.sink_tokens} sinks, {self.recent} recent)"),)

    # ---- what it does
    def check(self, side: Any, sweep: Any) -> None:
        if side.find("kv_quant") is not None or side.find("window") is not None:
            raise ChangeError("key_norm_eviction", "evicts from a full-precision cache", "drop kv_cache_dtype and attention from this side")

    def refuse_noop(self, *, longest_prompt: int, longest_run: int, trained: int | None) -> None:
        if self.budget >= longest_prompt:
            raise ChangeError("key_norm_eviction.budget", f"{self.budget} holds the whole of the longest prompt ({longest_prompt})",
                              "use a budget below the prompt lengths swept")

    def after_prefill(self, cache: Any) -> None:
        import torch

        for layer in cache.layers:
            keys, values = layer.keys, layer.values  # (batch, kv_heads, tokens, head_dim)
            tokens = keys.shape[-2]
            if tokens <= self.budget:
                continue
            middle = torch.arange(self.sink_tokens, tokens - self.recent, device=keys.device)
            norms = keys[..., self.sink_tokens : tokens - self.recent, :].float().norm(dim=-1).mean(dim=(0, 1))
            chosen = middle[norms.topk(self.budget - self.sink_tokens - self.recent, largest=False).indices]
            kept = torch.cat([torch.arange(self.sink_tokens, device=keys.device), chosen.sort().values,
                              torch.arange(tokens - self.recent, tokens, device=keys.device)])
            layer.keys, layer.values = keys.index_select(-2, kept), values.index_select(-2, kept)

    def kv_tokens(self, prompt: int, new: int) -> int | None:
        return min(prompt, self.budget) + max(new - 1, 0)
