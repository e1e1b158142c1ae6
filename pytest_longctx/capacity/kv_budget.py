"""KV-cache capacity planning from a model's config (per token, per sequence, admitted sequences) and measured KV blocks."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .kv_math import KvShape

if TYPE_CHECKING:
    from ..backends.in_process import Generation

GIB = 1024**3
Scale = Literal["token_head", "tensor", "channel"]

DTYPE_BYTES: dict[str, float] = {
    "fp32": 4, "float32": 4,
    "bf16": 2, "bfloat16": 2,
    "fp16": 2, "float16": 2, "half": 2,
    "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "int8": 1,
    "int4": 0.5, "fp4": 0.5,
}

# Per-layer attention kinds in a config's `layer_types`, and the config key giving how many tokens such a layer keeps.
# Linear-attention and state-space layers keep a fixed-size state, no per-token KV: they count as 0 tokens.
_LAYER_WINDOW_KEYS: dict[str, str | None] = {
    "full_attention": None,
    "attention": None,
    "sliding_attention": "sliding_window",
    "chunked_attention": "attention_chunk_size",
    "linear_attention": "",
    "mamba": "",
}


def dtype_bytes(dtype: str | float | Any) -> float:
    """Bytes per stored element for a dtype name (`bf16`, `fp8`, `float32`, ...), a torch dtype, or a number of bytes."""
    if isinstance(dtype, (int, float)) and not isinstance(dtype, bool):
        if dtype <= 0:
            raise ValueError(f"bytes per element must be positive, got {dtype!r}")
        return float(dtype)
    name = str(dtype).removeprefix("torch.").lower()
    if name.endswith("b") and name[:-1].replace(".", "", 1).isdigit() and float(name[:-1]) > 0:
        return float(name[:-1])  # "2B": what `dtype_name` calls a plain number of bytes
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of: {', '.join(DTYPE_BYTES)}, or a number of bytes")
    return DTYPE_BYTES[name]


_SHORT_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}


def dtype_name(dtype: str | float | Any) -> str:
    """The short name a budget reports for `dtype`: `torch.bfloat16` and `bfloat16` read `bf16`."""
    dtype_bytes(dtype)  # validates
    if isinstance(dtype, (int, float)):
        return f"{dtype:g}B"
    name = str(dtype).removeprefix("torch.").lower()
    return _SHORT_NAMES.get(name, name)


@dataclass(frozen=True)
class PrefixReuse:
    """What serving `requests` prompts that share a `prefix_tokens` prefix saves when the prefix's KV is reused."""

    prefix_tokens: int
    suffix_tokens: int
    requests: int
    tokens_not_prefilled: int  # prefix tokens computed once instead of once per request
    prefill_tokens_without: int
    prefill_tokens_with: int
    kv_bytes_saved: int  # the prefix's KV held once instead of once per request

    @property
    def prefill_fraction_saved(self) -> float:
        return self.tokens_not_prefilled / self.prefill_tokens_without if self.prefill_tokens_without else 0.0


@dataclass(frozen=True)
class KvBudget:
    """KV-cache sizes of one model: its shape, its cache dtype, and the window of each layer (None: full attention).

    Sizes are `2 (K and V) x kv_heads x head_dim x bytes per element` per token and layer; a sliding-window
    layer counts at most its window of tokens. `scale=` adds the stored float32 scales of a quantized cache.
    """

    shape: KvShape
    dtype: str = "bf16"
    windows: tuple[int | None, ...] | None = None

    def __post_init__(self) -> None:
        dtype_bytes(self.dtype)
        if self.windows is not None and len(self.windows) != self.shape.layers:
            raise ValueError(f"windows has {len(self.windows)} entries for {self.shape.layers} layers")

    @classmethod
    def from_numbers(
        cls, *, layers: int, kv_heads: int, head_dim: int, attention_heads: int | None = None, dtype: str | float = "bf16",
        window: int | None = None,
    ) -> KvBudget:
        """A budget from explicit numbers; `window` applies one sliding window to every layer."""
        for name, value in (("layers", layers), ("kv_heads", kv_heads), ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        heads = attention_heads if attention_heads is not None else kv_heads
        if heads % kv_heads:
            raise ValueError(f"attention heads ({heads}) must be a multiple of KV heads ({kv_heads})")
        windows = None if window is None else (window,) * layers
        return cls(KvShape(layers, kv_heads, head_dim, heads), dtype_name(dtype), windows)

    @classmethod
    def from_config(cls, config: Any, *, dtype: str | float | Any | None = None) -> KvBudget:
        """A budget from a transformers config object or the dict of a config.json (GQA, MQA, MHA, sliding windows).

        `dtype` defaults to the config's `torch_dtype`/`dtype`, else bf16.
        """
        data = _config_dict(config)
        shape, windows = _shape_and_windows(data)
        if dtype is None:
            declared = data.get("dtype") or data.get("torch_dtype")
            dtype = declared if isinstance(declared, str) and declared.lower() in DTYPE_BYTES else "bf16"
        return cls(shape, dtype_name(dtype), windows)

    @classmethod
    def from_json(cls, path: str | Path, *, dtype: str | float | None = None) -> KvBudget:
        """A budget from a Hugging Face `config.json` file; no weights or transformers import needed."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read a config.json ({exc})") from exc
        try:
            return cls.from_config(data, dtype=dtype)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    @classmethod
    def for_model(cls, model: Any) -> KvBudget:
        """The budget of a loaded model (a `ModelHandle`, backend or transformers model) in the dtype it runs in."""
        inner = getattr(model, "backend", model)  # a ModelHandle wraps a backend
        if not hasattr(inner, "config"):
            inner = inner.model  # a TransformersBackend wraps the transformers model
        return cls.from_config(inner.config, dtype=inner.dtype)

    # --- derived budgets -------------------------------------------------------------------------------

    def with_dtype(self, dtype: str | float | Any) -> KvBudget:
        return dataclasses.replace(self, dtype=dtype_name(dtype))

    def with_kv_heads(self, kv_heads: int) -> KvBudget:
        """The same model with another number of KV heads: `attention_heads` for MHA, 1 for MQA."""
        if kv_heads <= 0 or self.shape.attention_heads % kv_heads:
            raise ValueError(f"kv_heads must divide the {self.shape.attention_heads} attention heads, got {kv_heads}")
        return dataclasses.replace(self, shape=dataclasses.replace(self.shape, kv_heads=kv_heads))

    def mha(self) -> KvBudget:
        return self.with_kv_heads(self.shape.attention_heads)

    def mqa(self) -> KvBudget:
        return self.with_kv_heads(1)

    # --- sizes -----------------------------------------------------------------------------------------

    @property
    def bytes_per_element(self) -> float:
        return dtype_bytes(self.dtype)

    def bytes_per_token(self, dtype: str | float | Any | None = None) -> float:
        """Bytes one token adds while every layer still keeps it (below the smallest sliding window)."""
        return self.shape.bytes_per_token(self._bytes(dtype))

    def sequence_bytes(self, length: int, dtype: str | float | Any | None = None, *, scale: Scale | None = None) -> int:
        """KV bytes of one sequence of `length` tokens (sliding-window layers count at most their window)."""
        _check_tokens(length, "length")
        elem = self._bytes(dtype)
        if self.windows is None:
            return self.shape.sequence_bytes(length, elem, scale=scale)
        layer = dataclasses.replace(self.shape, layers=1)  # each layer at its own length; kv_math owns the formula
        total = 0
        for window in self.windows:
            kept = length if window is None else min(length, window)
            total += layer.sequence_bytes(kept, elem, scale=scale) if kept else 0
        return total

    def total_bytes(self, length: int, sequences: int, dtype: str | float | Any | None = None, *, scale: Scale | None = None) -> int:
        """KV bytes of `sequences` concurrent sequences of `length` tokens each."""
        _check_tokens(sequences, "sequences")
        return sequences * self.sequence_bytes(length, dtype, scale=scale)

    def admitted_sequences(
        self, memory_budget_bytes: int | float, length: int, dtype: str | float | Any | None = None, *, scale: Scale | None = None
    ) -> int:
        """How many sequences of `length` tokens fit whole in `memory_budget_bytes` of KV memory."""
        if memory_budget_bytes < 0:
            raise ValueError(f"memory_budget_bytes must be >= 0, got {memory_budget_bytes!r}")
        per = self.sequence_bytes(length, dtype, scale=scale)
        return int(memory_budget_bytes // per) if per else 0

    def relative_to_mha(self) -> float:
        """KV size relative to the same model with one KV head per attention head (1.0 for MHA, 1/heads for MQA)."""
        return self.shape.kv_heads / self.shape.attention_heads

    def relative_dtype_cost(self, dtype: str | float | Any, baseline: str | float | Any = "bf16") -> float:
        """KV size in `dtype` relative to `baseline`, e.g. `relative_dtype_cost("fp8")` is 0.5."""
        return dtype_bytes(dtype) / dtype_bytes(baseline)

    def prefix_reuse(
        self, prefix_tokens: int, requests: int, *, suffix_tokens: int = 0, dtype: str | float | Any | None = None,
    ) -> PrefixReuse:
        """Savings when `requests` prompts share a `prefix_tokens` prefix whose KV is computed and held once."""
        _check_tokens(prefix_tokens, "prefix_tokens", allow_zero=True)
        _check_tokens(suffix_tokens, "suffix_tokens", allow_zero=True)
        _check_tokens(requests, "requests")
        saved = prefix_tokens * (requests - 1)
        return PrefixReuse(
            prefix_tokens=prefix_tokens,
            suffix_tokens=suffix_tokens,
            requests=requests,
            tokens_not_prefilled=saved,
            prefill_tokens_without=requests * (prefix_tokens + suffix_tokens),
            prefill_tokens_with=prefix_tokens + requests * suffix_tokens,
            kv_bytes_saved=(requests - 1) * self.sequence_bytes(prefix_tokens, dtype) if prefix_tokens else 0,
        )

    def _bytes(self, dtype: str | float | Any | None) -> float:
        return self.bytes_per_element if dtype is None else dtype_bytes(dtype)

    # --- measurement -----------------------------------------------------------------------------------

    @contextmanager
    def measure(self) -> Iterator[KvMeasurement]:
        """Record the KV bytes of what runs in the block and, on CUDA, the peak allocated memory.

        Generations through a `ModelHandle` (the `model` fixture) are recorded on their own; other code can call
        `record()` or `record_cache()`. `kv_bytes` is the largest cache recorded (one sequence is held at a time).
        """
        measurement = KvMeasurement()
        measurement._start()
        _ACTIVE.append(measurement)
        try:
            yield measurement
        finally:
            _ACTIVE.remove(measurement)
            measurement._note_peak()


@dataclass(frozen=True)
class KvRecord:
    """One measured cache: its bytes, the tokens it held, and the analytic figure for them when known."""

    kv_bytes: int
    tokens: int | None = None
    analytic_bytes: int | None = None


@dataclass
class KvMeasurement:
    """What one `KvBudget.measure()` block recorded."""

    records: list[KvRecord] = field(default_factory=list)
    generations: list[Generation] = field(default_factory=list)
    peak_bytes: int | None = None  # CUDA only: the most memory allocated at once during the block
    start_allocated_bytes: int | None = None  # CUDA only: allocated when the block began

    @property
    def largest(self) -> KvRecord:
        if not self.records:
            raise RuntimeError(
                "nothing was measured in this block: generate with the `model` fixture inside `with kv_budget.measure()`, "
                "or call record() / record_cache()"
            )
        return max(self.records, key=lambda r: r.kv_bytes)

    @property
    def kv_bytes(self) -> int:
        return self.largest.kv_bytes

    @property
    def kv_tokens(self) -> int | None:
        return self.largest.tokens

    @property
    def analytic_bytes(self) -> int | None:
        """The analytic size of the largest cache recorded, for the cache it was (FP8 scales included)."""
        return self.largest.analytic_bytes

    @property
    def peak_increase_bytes(self) -> int | None:
        if self.peak_bytes is None or self.start_allocated_bytes is None:
            return None
        return self.peak_bytes - self.start_allocated_bytes

    def record(self, kv_bytes: int, *, tokens: int | None = None, analytic_bytes: int | None = None) -> None:
        self.records.append(KvRecord(int(kv_bytes), tokens, analytic_bytes))

    def record_cache(self, cache: Any) -> None:
        """Record a transformers Cache (or one of this package's FP8 caches) by the bytes of its own tensors."""
        from ..backends.kv_cache import cache_nbytes

        self.record(cache_nbytes(cache), tokens=int(cache.get_seq_length()))

    def record_generation(self, generation: Generation) -> None:
        self.generations.append(generation)
        self.record(generation.kv_bytes, tokens=generation.kv_tokens, analytic_bytes=generation.kv_bytes_analytic)
        if generation.peak_bytes is not None:
            self.peak_bytes = max(self.peak_bytes or 0, generation.peak_bytes)

    def _start(self) -> None:
        cuda = _cuda()
        if cuda is not None:
            cuda.synchronize()
            self.start_allocated_bytes = int(cuda.memory_allocated())
            cuda.reset_peak_memory_stats()
            self.peak_bytes = self.start_allocated_bytes

    def _note_peak(self) -> None:
        cuda = _cuda()
        if cuda is not None and self.peak_bytes is not None:
            cuda.synchronize()
            self.peak_bytes = max(self.peak_bytes, int(cuda.max_memory_allocated()))


_ACTIVE: list[KvMeasurement] = []


def record_generation(generation: Generation) -> None:
    """Hand a finished generation to every open `measure()` block (the model handle calls this)."""
    for measurement in _ACTIVE:
        measurement.record_generation(generation)


def note_peak_before_reset() -> None:
    """Fold the CUDA peak so far into open blocks before a backend resets the peak counter for its own figure."""
    for measurement in _ACTIVE:
        measurement._note_peak()


def _cuda() -> Any | None:
    """torch.cuda when torch is already imported and a CUDA device is in use; measuring never imports torch."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


def _check_tokens(value: int, name: str, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}")


# --- reading configs -----------------------------------------------------------------------------------


def _config_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, Mapping):
        data = dict(config)
        text = data.get("text_config")
        if isinstance(text, Mapping) and not _first(data, _LAYER_KEYS):
            merged = dict(text)
            merged.setdefault("dtype", data.get("dtype") or data.get("torch_dtype"))
            return merged
        return data
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return dict(text.to_dict())


_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HEAD_KEYS = ("num_attention_heads", "n_head", "num_heads", "n_heads")
_KV_HEAD_KEYS = ("num_key_value_heads", "num_kv_heads", "n_head_kv", "n_kv_heads")
_HIDDEN_KEYS = ("hidden_size", "n_embd", "d_model")


def _first(data: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return next((data[k] for k in keys if data.get(k) is not None), None)


def _shape_and_windows(data: Mapping[str, Any]) -> tuple[KvShape, tuple[int | None, ...] | None]:
    """KV shape and per-layer windows from a config dict, across the common naming schemes."""
    if data.get("kv_lora_rank"):
        raise ValueError("multi-head latent attention (kv_lora_rank) is not modelled; pass --layers/--kv-heads/--head-dim")

    def need(keys: tuple[str, ...], flag: str) -> int:
        value = _first(data, keys)
        if value is None:
            raise ValueError(f"the config has none of {', '.join(keys)}; pass {flag} explicitly")
        return int(value)

    layers = need(_LAYER_KEYS, "--layers")
    heads = need(_HEAD_KEYS, "--heads")
    kv_heads = _first(data, _KV_HEAD_KEYS)
    if kv_heads is None and data.get("multi_query_attention") and data.get("multi_query_group_num"):
        kv_heads = data["multi_query_group_num"]  # ChatGLM
    if kv_heads is None and data.get("multi_query"):
        kv_heads = 1  # GPT-BigCode, early Falcon
    head_dim = data.get("head_dim") or data.get("kv_channels")
    if head_dim is None:
        head_dim = need(_HIDDEN_KEYS, "--head-dim") // heads
    shape = KvShape(layers=layers, kv_heads=int(kv_heads or heads), head_dim=int(head_dim), attention_heads=heads)
    return shape, _windows(data, layers)


def _windows(data: Mapping[str, Any], layers: int) -> tuple[int | None, ...] | None:
    layer_types = data.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        if len(layer_types) != layers:
            raise ValueError(f"layer_types lists {len(layer_types)} layers for {layers} hidden layers")
        windows: list[int | None] = []
        for kind in layer_types:
            if kind not in _LAYER_WINDOW_KEYS:
                raise ValueError(f"unknown layer type {kind!r} in layer_types; known: {', '.join(_LAYER_WINDOW_KEYS)}")
            key = _LAYER_WINDOW_KEYS[kind]
            if key is None:
                windows.append(None)
            elif key == "":
                windows.append(0)
            else:
                size = data.get(key)
                windows.append(int(size) if size else None)
        return None if all(w is None for w in windows) else tuple(windows)
    window = data.get("sliding_window")
    if not window or data.get("use_sliding_window") is False:
        return None
    window = int(window)
    if data.get("use_sliding_window") and data.get("max_window_layers") is not None:  # Qwen2 family
        first = int(data["max_window_layers"])
        return tuple(window if i >= first else None for i in range(layers))
    pattern = data.get("sliding_window_pattern") or (2 if data.get("model_type") == "gemma2" else None)
    if pattern:  # Gemma 2/3, Cohere 2: every `pattern`-th layer is full attention
        return tuple(None if (i + 1) % int(pattern) == 0 else window for i in range(layers))
    return (window,) * layers  # Mistral 7B v0.1, Phi-3, Starcoder2: every layer slides


def format_bytes(n: float) -> str:
    """`42949672960` -> `40 GiB`; two decimals where the value is not whole in its unit."""
    for unit, size in (("TiB", 1024**4), ("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.0f} {unit}" if math.isclose(value, round(value), abs_tol=1e-9) else f"{value:.2f} {unit}"
    return f"{n:g} B"
