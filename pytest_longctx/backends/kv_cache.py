"""KV caches for the transformers backend: the model's own dynamic cache, or one that stores K and V quantized
(FP8, INT8 or packed INT4) with float32 scales, which attention reads back dequantized."""

from __future__ import annotations

import copy
from typing import Any, Literal

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
ReuseScope = Literal["prefix", "exact"]


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


class _Appender:
    """Appends along the token axis into a buffer with spare room and hands out views of its filled front, so a
    decode step writes one position instead of copying the whole cache as torch.cat does."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None
        self._view: torch.Tensor | None = None

    def append(self, current: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
        if current is not None and current is not self._view and not self._fronts(current):
            self._buffer = None  # the owner's tensor was set from outside: start over from it
        n = current.shape[-2] if current is not None and current.dim() == new.dim() else 0
        end = n + new.shape[-2]
        if self._buffer is None or end > self._buffer.shape[-2]:
            buffer = new.new_empty((*new.shape[:-2], end + max(256, end // 8), new.shape[-1]))
            if n:
                assert current is not None
                buffer[..., :n, :] = current
            self._buffer = buffer
        self._buffer[..., n:end, :] = new
        self._view = self._buffer[..., :end, :]
        return self._view

    def _fronts(self, t: torch.Tensor) -> bool:
        """Whether `t` is the front of the buffer (a crop of the last view): appending may go on in place."""
        b = self._buffer
        return b is not None and t.data_ptr() == b.data_ptr() and t.stride() == b.stride() and t.shape[:-2] == b.shape[:-2]


class AppendLayer(DynamicLayer):
    """The model's dynamic layer, appending into a buffer with room to grow instead of concatenating: the same
    K/V values (as views), a faster decode, a little spare memory. For runs where only answers count."""

    keys: torch.Tensor | None  # as transformers' CacheLayerMixin declares them (its classes are Any to mypy here)
    values: torch.Tensor | None

    def __init__(self) -> None:
        super().__init__()
        self._appenders: dict[str, _Appender] = {}

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = self._appenders.setdefault("keys", _Appender()).append(self.keys, key_states)
        self.values = self._appenders.setdefault("values", _Appender()).append(self.values, value_states)
        return self.keys, self.values


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

    With `keep_dequantized`, the layer also keeps the dequantized K/V and extends them by each update's tokens
    instead of dequantizing every code on every step: the same values (dequantization is elementwise), a faster
    decode, and the memory of an unquantized cache on top. With `append_in_place`, tensors grow in buffers with
    spare room instead of by concatenation (see AppendLayer). Both are for runs where only answers count.
    """

    def __init__(
        self, codec: Codec, granularity: str = "token_head", *, keep_dequantized: bool = False, append_in_place: bool = False
    ) -> None:
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown KV scale granularity {granularity!r}; use one of {', '.join(GRANULARITIES)}")
        self.codec = codec
        self.granularity = granularity
        self.qkeys: torch.Tensor | None = None
        self.qvalues: torch.Tensor | None = None
        self.kscale: torch.Tensor | None = None
        self.vscale: torch.Tensor | None = None
        self.keep_dequantized = keep_dequantized
        self.append_in_place = append_in_place
        self._appenders: dict[str, _Appender] = {}
        self.dkeys: torch.Tensor | None = None
        self.dvalues: torch.Tensor | None = None

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
            # Per sequence, never across the batch: a batched run must quantize each row as a single run would.
            amax = states.abs().amax(dim=(1, 2, 3), keepdim=True)
        else:  # channel: over the prompt's tokens, per sequence, KV head and head-dim channel
            amax = states.abs().amax(dim=2, keepdim=True)
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
        if self.keep_dequantized and self.dkeys is None and self.qkeys is not None:
            self.dkeys, self.dvalues = self.dequantized()  # codes copied in without their dequantized copy
        first = self.qkeys is None
        self.qkeys, self.qvalues = self._grow("qkeys", qk), self._grow("qvalues", qv)
        if self._per_token_scales:
            self.kscale, self.vscale = self._grow("kscale", ks), self._grow("vscale", vs)
        elif first:
            self.kscale, self.vscale = ks, vs
        if not self.keep_dequantized:
            return self.dequantized()
        self.dkeys = self._grow("dkeys", self._dequantize(qk, ks))
        self.dvalues = self._grow("dvalues", self._dequantize(qv, vs))
        return self.dkeys, self.dvalues

    def _grow(self, name: str, new: torch.Tensor) -> torch.Tensor:
        """The tensor `name` with `new` appended along the token axis."""
        current = getattr(self, name)
        if self.append_in_place:
            return self._appenders.setdefault(name, _Appender()).append(current, new)
        return new if current is None else torch.cat([current, new], dim=-2)

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All stored K and V, dequantized from their codes."""
        assert self.qkeys is not None and self.qvalues is not None and self.kscale is not None and self.vscale is not None
        return self._dequantize(self.qkeys, self.kscale), self._dequantize(self.qvalues, self.vscale)

    def get_seq_length(self) -> int:
        return 0 if self.qkeys is None else self.qkeys.shape[-2]

    def keep(self, index: slice) -> None:
        """Keep only the token positions selected by `index` (scales that are per token follow)."""
        assert self.qkeys is not None and self.qvalues is not None and self.kscale is not None and self.vscale is not None
        self.qkeys, self.qvalues = self.qkeys[..., index, :], self.qvalues[..., index, :]
        if self._per_token_scales:
            self.kscale, self.vscale = self.kscale[..., index, :], self.vscale[..., index, :]
        if self.dkeys is not None and self.dvalues is not None:
            self.dkeys, self.dvalues = self.dkeys[..., index, :], self.dvalues[..., index, :]

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove == 0 or self.qkeys is None:
            return
        self.keep(slice(None, tokens_to_remove))

    def reset(self) -> None:
        self.qkeys = self.qvalues = self.kscale = self.vscale = self.dkeys = self.dvalues = None
        self.is_initialized = False


class Fp8Layer(QuantizedLayer):
    def __init__(self, fp8_dtype: torch.dtype, granularity: str = "token_head") -> None:
        super().__init__(Fp8Codec(fp8_dtype), granularity)


def cache_keyword(model: Any) -> str:
    """The forward() keyword that takes a Cache: 5.24 renamed `past_key_values=` to `cache=`; 5.17 knows only the old."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def make_cache(kv_cache_dtype: str, config: Any, *, kv_scale: str = "token_head", answers_only: bool = False) -> Cache:
    """A fresh cache for one sequence: the model's dynamic cache for `auto`, else a quantized cache.

    `answers_only`: for runs whose timings and memory are not measured. Layers append in place and quantized
    layers keep their dequantized K/V too (AppendLayer, QuantizedLayer): attention reads the very same values,
    decode runs faster, and the cache takes more memory than it reports.
    """
    if kv_cache_dtype == "auto":
        cache = DynamicCache(config=config)
        if answers_only and cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers):
            return Cache(layers=[AppendLayer() for _ in cache.layers])
        return cache  # sliding-window layers (or lazily added ones) stay the model's own
    codec = codec_for(kv_cache_dtype)
    text = config.get_text_config(decoder=True)
    return Cache(
        layers=[
            QuantizedLayer(codec, kv_scale, keep_dequantized=answers_only, append_in_place=answers_only)
            for _ in range(text.num_hidden_layers)
        ]
    )


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


def held_tokens(cache: Cache) -> int:
    """Tokens whose K/V the cache holds now: a layer's `stored_tokens()` where it has one (a windowed layer counts
    the tokens seen in `get_seq_length()`, as transformers' own sliding layers do), else its `get_seq_length()`."""
    counts = [layer.stored_tokens() if hasattr(layer, "stored_tokens") else layer.get_seq_length() for layer in cache.layers]
    return max(counts, default=0)


def croppable(cache: Cache) -> bool:
    """Whether `crop_to` can take the cache back to an earlier length (a windowed layer has evicted what it would need)."""
    return all(isinstance(layer, (DynamicLayer, QuantizedLayer)) and layer.is_croppable for layer in cache.layers)


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


def reuse_scope(cache: Cache) -> ReuseScope | None:
    """How much of a prompt's cache another prompt may reuse and still get the very codes a fresh run stores.

    `prefix`: a token's K/V (and per-token scales) depend only on the tokens up to it, so any common prefix carries
    over. `exact`: scales calibrated on the whole prompt (`tensor`, `channel`) also depend on the tokens after any
    prefix, so only an identical prompt may reuse them. None: layers not known here (a sliding window has evicted
    tokens; another layer type may keep state that slicing would not carry), so never reuse.
    """
    if not cache.layers:
        return None
    scopes: set[ReuseScope] = set()
    for layer in cache.layers:
        # Exact types: a subclass (a windowed layer, say) may evict or keep state the copies below would not carry.
        if type(layer) in (DynamicLayer, AppendLayer):
            scopes.add("prefix")
        elif type(layer) in (QuantizedLayer, Fp8Layer):
            scopes.add("prefix" if layer._per_token_scales else "exact")
        else:
            return None
    return "exact" if "exact" in scopes else "prefix"


def copy_prefix(cache: Cache, tokens: int, *, device: torch.device | str | None = None) -> Cache:
    """A new cache holding copies of the first `tokens` positions of every layer of `cache` (on `device`, else
    where they are), which is left as it was.

    Frozen scales are copied as they are; whether they fit the new prompt is `reuse_scope`'s question.
    """
    new = copy.copy(cache)
    new.layers = [_copy_layer(layer, tokens, None if device is None else torch.device(device)) for layer in cache.layers]
    return new


def cache_device(cache: Cache) -> torch.device | None:
    """Where the cache's tensors are (None while it holds none)."""
    tensors = cache_tensors(cache)
    return tensors[0].device if tensors else None


def _copy_layer(layer: Any, tokens: int, device: torch.device | None) -> Any:
    new = copy.copy(layer)
    if "_appenders" in vars(new):
        new._appenders = {}  # the copy's tensors are its own; appending starts a buffer of its own
    if device is not None and getattr(layer, "device", None) is not None:
        new.device = device

    def head(t: torch.Tensor) -> torch.Tensor:
        return t[..., :tokens, :].to(device=device or t.device, memory_format=torch.contiguous_format, copy=True)

    if isinstance(layer, QuantizedLayer):
        if layer.qkeys is not None:
            assert layer.qvalues is not None and layer.kscale is not None and layer.vscale is not None
            new.qkeys, new.qvalues = head(layer.qkeys), head(layer.qvalues)
            if layer._per_token_scales:
                new.kscale, new.vscale = head(layer.kscale), head(layer.vscale)
            else:
                new.kscale = layer.kscale.to(device=device or layer.kscale.device, copy=True)
                new.vscale = layer.vscale.to(device=device or layer.vscale.device, copy=True)
        new.dkeys = new.dvalues = None  # a kept dequantized copy is rebuilt from the codes on the next update
    elif getattr(layer, "keys", None) is not None:
        new.keys, new.values = head(layer.keys), head(layer.values)
    return new


def compact(cache: Cache) -> None:
    """Free what a cache holds only for speed (dequantized copies, spare room in append buffers, positions sliced
    off), so that it holds its K/V alone and `cache_nbytes` is what it takes: for caches kept for later reuse."""
    for layer in cache.layers:
        if isinstance(layer, QuantizedLayer):
            layer.dkeys = layer.dvalues = None
            names: tuple[str, ...] = ("qkeys", "qvalues", "kscale", "vscale")
        else:
            names = ("keys", "values")
        for name in names:
            t = getattr(layer, name, None)
            if t is not None and t.untyped_storage().nbytes() > t.nbytes:
                setattr(layer, name, t.clone(memory_format=torch.contiguous_format))
        if "_appenders" in vars(layer):
            layer._appenders = {}


def crop_to(cache: Cache, tokens: int) -> None:
    """Keep only the first `tokens` positions of every layer (drops what decoding appended after a prompt)."""
    for layer in cache.layers:
        if layer.get_seq_length() <= tokens:
            continue
        if isinstance(layer, QuantizedLayer):
            layer.keep(slice(None, tokens))
        else:
            layer.keys, layer.values = layer.keys[..., :tokens, :], layer.values[..., :tokens, :]


def sequence_nbytes(cache: Cache, row: int, tokens: int) -> int:
    """Bytes that batch row `row` takes for its first `tokens` positions: what a single run's cache of it would hold."""
    total = 0
    for layer in cache.layers:
        if isinstance(layer, QuantizedLayer):
            per_token = [layer.qkeys, layer.qvalues] + ([layer.kscale, layer.vscale] if layer._per_token_scales else [])
            whole = [] if layer._per_token_scales else [layer.kscale, layer.vscale]
        else:
            per_token, whole = [getattr(layer, "keys", None), getattr(layer, "values", None)], []
        total += sum(t[row, ..., :tokens, :].nbytes for t in per_token if t is not None)
        total += sum(t[row].nbytes for t in whole if t is not None)
    return total


def bytes_per_element(kv_cache_dtype: str, model_dtype: torch.dtype) -> float:
    if kv_cache_dtype == "auto":
        return torch.empty((), dtype=model_dtype).element_size()
    return codec_for(kv_cache_dtype).bytes_per_element
