"""KV-cache quantization as a change: K and V stored as FP8/INT8/INT4 codes with scales (backends.kv_cache)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..gate.limits import shown
from .base import CachePlan, Change, ChangeError

KvCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "int8", "int4"]
KvScale = Literal["token_head", "tensor", "channel"]


@dataclass(frozen=True)
class KvQuant(Change):
    """`kv_cache_dtype` (and `kv_scale`, the scales' granularity). A served side keeps it too: it tells the analytic
    KV estimate what the engine stores (the engine itself takes its own flag in launch.command)."""

    kind = "kv_quant"
    order = 50
    keys = ("kv_cache_dtype", "kv_scale")
    stage = "cache"
    in_process_only = False

    kv_cache_dtype: KvCacheDtype = "auto"
    kv_scale: KvScale = "token_head"

    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> KvQuant | None:
        dtype = side.get("kv_cache_dtype", "auto")
        scale = side.get("kv_scale", "token_head")
        if dtype not in get_args(KvCacheDtype):
            raise ChangeError("kv_cache_dtype", f"{shown(dtype)} is not supported", f"use one of: {', '.join(get_args(KvCacheDtype))}")
        if scale not in get_args(KvScale):
            raise ChangeError("kv_scale", f"{shown(scale)} is not supported", f"use one of: {', '.join(get_args(KvScale))}")
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
