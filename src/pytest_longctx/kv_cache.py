"""KV caches for the transformers backend: the model's own dynamic cache, or one that stores K and V quantized
(FP8, INT8 or packed INT4) with float32 scales, which attention reads back dequantized."""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

FP8_DTYPES = {
    "fp8": torch.float8_e4m3fn,  # vLLM's "fp8" means e4m3
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
INT_BITS = {"int8": 8, "int4": 4}
QUANTIZED = (*FP8_DTYPES, *INT_BITS)
GRANULARITIES = ("token_head", "tensor", "channel")


class Codec:
    """How values become stored codes and back, given a scale; `qmax` is the largest code magnitude."""

    qmax: float
    bytes_per_element: float

    def encode(self, scaled: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Fp8Codec(Codec):
    bytes_per_element = 1

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.qmax = torch.finfo(dtype).max
        # CPU casts from float8 are scalar loops; a 256-entry table lookup is several times faster.
        self._lut = torch.arange(256, dtype=torch.uint8).view(dtype).to(torch.float32).nan_to_num(0.0)

    def encode(self, scaled: torch.Tensor) -> torch.Tensor:
        return scaled.clamp(-self.qmax, self.qmax).to(self.dtype)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.device.type != "cpu":
            return codes.to(torch.float32)
        flat = self._lut.index_select(0, codes.view(torch.uint8).reshape(-1).to(torch.int32))
        return flat.view(codes.shape)


class Int8Codec(Codec):
    bytes_per_element = 1
    qmax = 127.0

    def encode(self, scaled: torch.Tensor) -> torch.Tensor:
        return scaled.round().clamp(-127, 127).to(torch.int8)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.to(torch.float32)


class Int4Codec(Codec):
    """Symmetric 4-bit codes (-7..7), two per byte along the head dimension (which must be even)."""

    bytes_per_element = 0.5
    qmax = 7.0

    def encode(self, scaled: torch.Tensor) -> torch.Tensor:
        if scaled.shape[-1] % 2:
            raise ValueError(f"int4 KV packing needs an even head_dim, got {scaled.shape[-1]}")
        nibbles = (scaled.round().clamp(-7, 7) + 8).to(torch.uint8)
        return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        low = (codes & 0x0F).to(torch.int16) - 8
        high = (codes >> 4).to(torch.int16) - 8
        return torch.stack((low, high), dim=-1).flatten(-2).to(torch.float32)


def codec_for(kv_cache_dtype: str) -> Codec:
    if kv_cache_dtype in FP8_DTYPES:
        return Fp8Codec(FP8_DTYPES[kv_cache_dtype])
    if kv_cache_dtype == "int8":
        return Int8Codec()
    if kv_cache_dtype == "int4":
        return Int4Codec()
    raise ValueError(f"unknown kv_cache_dtype {kv_cache_dtype!r}; use auto or one of {', '.join(QUANTIZED)}")


class QuantizedLayer(DynamicLayer):
    """One layer's K/V stored as codes with float32 scales, read back dequantized.

    Unlike transformers' quantized layers, the prompt's own K/V are quantized before attention reads them, so
    prefill sees the quantization error exactly as decode does (as in a serving engine with a quantized cache).
    Scales: per token and KV head (`token_head`); one per tensor (`tensor`), or one per KV head and channel
    (`channel`), both calibrated on the first update (the prompt) and then frozen, as static scales are.
    """

    def __init__(self, codec: Codec, granularity: str = "token_head") -> None:
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown KV scale granularity {granularity!r}; use one of {', '.join(GRANULARITIES)}")
        self.codec = codec
        self.granularity = granularity
        self.qkeys: torch.Tensor | None = None
        self.qvalues: torch.Tensor | None = None
        self.kscale: torch.Tensor | None = None
        self.vscale: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.out_dtype = key_states.dtype
        self.is_initialized = True

    def _scale_for(self, states: torch.Tensor, frozen: torch.Tensor | None) -> torch.Tensor:
        if self.granularity == "token_head":
            amax = states.abs().amax(dim=-1, keepdim=True)
        elif frozen is not None:
            return frozen
        elif self.granularity == "tensor":
            amax = states.abs().amax().reshape(1, 1, 1, 1)
        else:  # channel: over the prompt's tokens, per KV head and head-dim channel
            amax = states.abs().amax(dim=(0, 2), keepdim=True)
        return (amax.float() / self.codec.qmax).clamp(min=torch.finfo(torch.float32).tiny)

    def _dequantize(self, codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return (self.codec.decode(codes) * scale).to(self.out_dtype)

    @property
    def _per_token_scales(self) -> bool:
        return self.granularity == "token_head"

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        ks = self._scale_for(key_states, None if self._per_token_scales else self.kscale)
        vs = self._scale_for(value_states, None if self._per_token_scales else self.vscale)
        # Frozen scales can be exceeded by later tokens: codecs saturate instead of overflowing.
        qk, qv = self.codec.encode(key_states.float() / ks), self.codec.encode(value_states.float() / vs)
        if self.qkeys is None:
            self.qkeys, self.qvalues, self.kscale, self.vscale = qk, qv, ks, vs
        else:
            assert self.qvalues is not None and self.kscale is not None and self.vscale is not None
            self.qkeys = torch.cat([self.qkeys, qk], dim=-2)
            self.qvalues = torch.cat([self.qvalues, qv], dim=-2)
            if self._per_token_scales:
                self.kscale = torch.cat([self.kscale, ks], dim=-2)
                self.vscale = torch.cat([self.vscale, vs], dim=-2)
        assert self.qvalues is not None and self.kscale is not None and self.vscale is not None
        return self._dequantize(self.qkeys, self.kscale), self._dequantize(self.qvalues, self.vscale)

    def get_seq_length(self) -> int:
        return 0 if self.qkeys is None else self.qkeys.shape[-2]

    def keep(self, index: slice) -> None:
        """Keep only the token positions selected by `index` (scales that are per token follow)."""
        assert self.qkeys is not None and self.qvalues is not None and self.kscale is not None and self.vscale is not None
        self.qkeys, self.qvalues = self.qkeys[..., index, :], self.qvalues[..., index, :]
        if self._per_token_scales:
            self.kscale, self.vscale = self.kscale[..., index, :], self.vscale[..., index, :]

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove == 0 or self.qkeys is None:
            return
        self.keep(slice(None, tokens_to_remove))

    def reset(self) -> None:
        self.qkeys = self.qvalues = self.kscale = self.vscale = None
        self.is_initialized = False


class Fp8Layer(QuantizedLayer):
    def __init__(self, fp8_dtype: torch.dtype, granularity: str = "token_head") -> None:
        super().__init__(Fp8Codec(fp8_dtype), granularity)


def make_cache(kv_cache_dtype: str, config: Any, *, kv_scale: str = "token_head") -> Cache:
    """A fresh cache for one sequence: the model's dynamic cache for `auto`, else a quantized cache."""
    if kv_cache_dtype == "auto":
        return DynamicCache(config=config)
    codec = codec_for(kv_cache_dtype)
    text = config.get_text_config(decoder=True)
    return Cache(layers=[QuantizedLayer(codec, kv_scale) for _ in range(text.num_hidden_layers)])


def cache_tensors(cache: Cache) -> list[torch.Tensor]:
    """Every tensor the cache stores for K and V (codes and scales included)."""
    tensors: list[torch.Tensor] = []
    for layer in cache.layers:
        if isinstance(layer, QuantizedLayer):
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
        if isinstance(layer, QuantizedLayer):
            layer.keep(slice(excess, None))
        else:
            layer.keys, layer.values = layer.keys[..., excess:, :], layer.values[..., excess:, :]


def bytes_per_element(kv_cache_dtype: str, model_dtype: torch.dtype) -> float:
    if kv_cache_dtype == "auto":
        return torch.empty((), dtype=model_dtype).element_size()
    return codec_for(kv_cache_dtype).bytes_per_element
