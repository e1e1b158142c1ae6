"""KV-cache quantization as a change: K and V stored as FP8/INT8/INT4 codes with scales (backends.kv_cache)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from .base import CachePlan, Change
from .errors import one_of

KvCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "int8", "int4"]
KvScale = Literal["token_head", "tensor", "channel"]


@dataclass(frozen=True)
class KvQuant(Change, kind="kv_quant", order=50, keys=("kv_cache_dtype", "kv_scale"), stage="cache", in_process_only=False):
    """`kv_cache_dtype` (and `kv_scale`, the scales' granularity). A served side keeps it too: it tells the analytic
    KV estimate what the engine stores (the engine itself takes its own flag in launch.command)."""

    kv_cache_dtype: KvCacheDtype = "auto"
    kv_scale: KvScale = "token_head"

    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> KvQuant | None:
        dtype = one_of(side.get("kv_cache_dtype", "auto"), "kv_cache_dtype", get_args(KvCacheDtype))
        scale = one_of(side.get("kv_scale", "token_head"), "kv_scale", get_args(KvScale))
        if dtype == "auto" and scale == "token_head":
            return None
        return cls(dtype, scale)

    def record(self) -> dict[str, Any]:
        return {"kv_cache_dtype": self.kv_cache_dtype, "kv_scale": self.kv_scale}

    def describe(self) -> tuple[tuple[str, str], ...]:
        rows = [("kv_cache_dtype", self.kv_cache_dtype)] if self.kv_cache_dtype != "auto" else []
        return (*rows, *([("kv_scale", self.kv_scale)] if self.kv_scale != "token_head" else []))

    def changes_computation(self) -> bool:
        # A scale granularity without quantization stores nothing differently.
        return self.kv_cache_dtype != "auto"

    def cache(self, plan: CachePlan) -> CachePlan:
        from dataclasses import replace

        return replace(plan, kv_cache_dtype=self.kv_cache_dtype, kv_scale=self.kv_scale)


CHANGE = KvQuant
