"""KV caches for the transformers backend: the model's own dynamic cache, or one that stores K and V as FP8."""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

FP8_DTYPES = {
    "fp8": torch.float8_e4m3fn,  # vLLM's "fp8" means e4m3
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


class Fp8Layer(DynamicLayer):
    """One layer's K/V stored as float8 with float32 scales, read back dequantized.

    Unlike transformers' `Fp8QuantizedLayer`, the prompt's own K/V are quantized before attention reads them,
    so prefill sees the FP8 error exactly as decode does (as in a serving engine with an FP8 cache).
    Scales are per token and KV head (`token_head`), or one per tensor (`tensor`), calibrated on the first
    update and then frozen, as a static scale is.
    """

    def __init__(self, fp8_dtype: torch.dtype, granularity: str = "token_head") -> None:
        super().__init__()
        if granularity not in ("token_head", "tensor"):
            raise ValueError(f"unknown FP8 scale granularity {granularity!r}; use 'token_head' or 'tensor'")
        self.fp8_dtype = fp8_dtype
        self.fp8_max = torch.finfo(fp8_dtype).max
        self.granularity = granularity
        self.qkeys: torch.Tensor | None = None
        self.qvalues: torch.Tensor | None = None
        self.kscale: torch.Tensor | None = None
        self.vscale: torch.Tensor | None = None
        self._lut: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.out_dtype = key_states.dtype
        if self.device.type == "cpu":
            # CPU casts from float8 are scalar loops; a 256-entry table lookup is several times faster.
            codes = torch.arange(256, dtype=torch.uint8).view(self.fp8_dtype)
            self._lut = codes.to(torch.float32).nan_to_num(0.0)
        self.is_initialized = True

    def _scale_for(self, states: torch.Tensor, frozen: torch.Tensor | None) -> torch.Tensor:
        tiny = torch.finfo(torch.float32).tiny
        if self.granularity == "token_head":
            return (states.abs().amax(dim=-1, keepdim=True).float() / self.fp8_max).clamp(min=tiny)
        if frozen is not None:
            return frozen
        return (states.abs().amax().float() / self.fp8_max).clamp(min=tiny).reshape(1, 1, 1, 1)

    def _quantize(self, states: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        # A frozen per-tensor scale can be exceeded by later tokens: saturate instead of producing NaN.
        return (states.float() / scale).clamp(-self.fp8_max, self.fp8_max).to(self.fp8_dtype)

    def _dequantize(self, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if self._lut is not None:
            flat = self._lut.index_select(0, q.view(torch.uint8).reshape(-1).to(torch.int32))
            values = flat.view(q.shape)
        else:
            values = q.to(torch.float32)
        return (values * scale).to(self.out_dtype)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        ks = self._scale_for(key_states, self.kscale if self.granularity == "tensor" else None)
        vs = self._scale_for(value_states, self.vscale if self.granularity == "tensor" else None)
        qk, qv = self._quantize(key_states, ks), self._quantize(value_states, vs)
        if self.qkeys is None:
            self.qkeys, self.qvalues, self.kscale, self.vscale = qk, qv, ks, vs
        else:
            assert self.qvalues is not None and self.kscale is not None and self.vscale is not None
            self.qkeys = torch.cat([self.qkeys, qk], dim=-2)
            self.qvalues = torch.cat([self.qvalues, qv], dim=-2)
            if self.granularity == "token_head":
                self.kscale = torch.cat([self.kscale, ks], dim=-2)
                self.vscale = torch.cat([self.vscale, vs], dim=-2)
        assert self.qvalues is not None and self.kscale is not None and self.vscale is not None
        return self._dequantize(self.qkeys, self.kscale), self._dequantize(self.qvalues, self.vscale)

    def get_seq_length(self) -> int:
        return 0 if self.qkeys is None else self.qkeys.shape[-2]

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove == 0 or self.qkeys is None:
            return
        assert self.qvalues is not None and self.kscale is not None and self.vscale is not None
        self.qkeys = self.qkeys[..., :tokens_to_remove, :]
        self.qvalues = self.qvalues[..., :tokens_to_remove, :]
        if self.granularity == "token_head":
            self.kscale = self.kscale[..., :tokens_to_remove, :]
            self.vscale = self.vscale[..., :tokens_to_remove, :]

    def reset(self) -> None:
        self.qkeys = self.qvalues = self.kscale = self.vscale = None
        self.is_initialized = False

def make_cache(kv_cache_dtype: str, config: Any, *, kv_scale: str = "token_head") -> Cache:
    """A fresh cache for one sequence: the model's dynamic cache for `auto`, else an FP8 cache."""
    if kv_cache_dtype == "auto":
        return DynamicCache(config=config)
    if kv_cache_dtype not in FP8_DTYPES:
        raise ValueError(f"unknown kv_cache_dtype {kv_cache_dtype!r}; use auto or one of {', '.join(FP8_DTYPES)}")
    text = config.get_text_config(decoder=True)
    layers = [Fp8Layer(FP8_DTYPES[kv_cache_dtype], kv_scale) for _ in range(text.num_hidden_layers)]
    return Cache(layers=layers)


def cache_tensors(cache: Cache) -> list[torch.Tensor]:
    """Every tensor the cache stores for K and V (quantized data and scales included)."""
    tensors: list[torch.Tensor] = []
    for layer in cache.layers:
        if isinstance(layer, Fp8Layer):
            tensors.extend(t for t in (layer.qkeys, layer.qvalues, layer.kscale, layer.vscale) if t is not None)
        elif getattr(layer, "keys", None) is not None:
            tensors.extend((layer.keys, layer.values))
    return tensors


def cache_nbytes(cache: Cache) -> int:
    """Bytes the cache holds for K and V, measured from its own tensors (quantization scales included)."""
    return sum(t.nbytes for t in cache_tensors(cache))


def keep_last(cache: Cache, tokens: int) -> None:
    """Evict all but the last `tokens` positions from every layer (callers pass absolute positions afterwards)."""
    for layer in cache.layers:
        excess = layer.get_seq_length() - tokens
        if excess <= 0:
            continue
        if isinstance(layer, Fp8Layer):
            assert layer.qkeys is not None and layer.qvalues is not None and layer.kscale is not None and layer.vscale is not None
            layer.qkeys, layer.qvalues = layer.qkeys[..., excess:, :], layer.qvalues[..., excess:, :]
            if layer.granularity == "token_head":
                layer.kscale, layer.vscale = layer.kscale[..., excess:, :], layer.vscale[..., excess:, :]
        else:
            layer.keys, layer.values = layer.keys[..., excess:, :], layer.values[..., excess:, :]


def bytes_per_element(kv_cache_dtype: str, model_dtype: torch.dtype) -> int:
    return 1 if kv_cache_dtype in FP8_DTYPES else torch.empty((), dtype=model_dtype).element_size()
