"""Serving engines' Prometheus /metrics: a small text-format parser and the KV-cache figures vLLM and llama.cpp report."""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ...capacity.kv_math import KvShape

Engine = Literal["vllm", "llamacpp", "unknown"]

# Bytes per K or V element of the cache types engines name. vLLM's "auto" follows the model's dtype, which
# /metrics does not say; the served models this targets run in 16-bit. llama.cpp's quantized types store
# blocks of 32 values with an fp16 scale (and, for the _1 types, an fp16 minimum).
CACHE_DTYPE_BYTES: dict[str, float] = {
    "auto": 2.0, "bfloat16": 2.0, "float16": 2.0, "half": 2.0, "f16": 2.0, "bf16": 2.0, "float32": 4.0, "f32": 4.0,
    "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0, "fp8_inc": 1.0, "fp8_ds_mla": 1.0, "int8": 1.0, "int4": 0.5,
    "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32, "iq4_nl": 18 / 32,
}


# Engines are scraped directly (loopback or the cluster network): an http_proxy in the environment is not for them.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class MetricsFormatError(ValueError):
    """A /metrics body that is not Prometheus text format; the message names the line."""


@dataclass(frozen=True)
class Sample:
    """One sample line: `name{label="value",...} value`."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str) -> str | None:
        return next((v for k, v in self.labels if k == key), None)


def parse_prometheus(text: str) -> tuple[Sample, ...]:
    """Parse the Prometheus text exposition format (and OpenMetrics' subset of it); comments are skipped.

    Raises MetricsFormatError on a line that is neither a comment nor a sample.
    """
    samples = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            samples.append(_sample(line))
        except (ValueError, IndexError) as exc:
            raise MetricsFormatError(f"line {number}: {raw!r} is not a metric sample ({exc})") from None
    return tuple(samples)


def _sample(line: str) -> Sample:
    brace, space = line.find("{"), line.find(" ")
    labels: list[tuple[str, str]] = []
    if brace != -1 and (space == -1 or brace < space):
        name, i = line[:brace], brace + 1
        while True:
            while line[i] in " ,":
                i += 1
            if line[i] == "}":
                i += 1
                break
            eq = line.index("=", i)
            key = line[i:eq].strip()
            if line[eq + 1] != '"':
                raise ValueError(f"label {key} has an unquoted value")
            value, i = _quoted(line, eq + 2)
            labels.append((key, value))
        rest = line[i:].split()
    else:
        name, *rest = line.split()
    if not name or not rest:
        raise ValueError("expected `name value`")
    return Sample(name, tuple(labels), _number(rest[0]))  # rest[1], if any, is a timestamp: not needed


def _quoted(line: str, i: int) -> tuple[str, int]:
    """The label value starting at `i` (just past its opening quote), unescaped, and the index past its closing quote."""
    out = []
    while line[i] != '"':
        if line[i] == "\\":
            i += 1
            out.append({"n": "\n", "\\": "\\", '"': '"'}.get(line[i], "\\" + line[i]))
        else:
            out.append(line[i])
        i += 1
    return "".join(out), i + 1


def _number(text: str) -> float:
    special = {"NaN": math.nan, "+Inf": math.inf, "Inf": math.inf, "-Inf": -math.inf}
    return special[text] if text in special else float(text)


@dataclass(frozen=True)
class EngineMetrics:
    """What an engine's /metrics says about its KV cache at the moment it was scraped.

    `kv_usage` is the fraction of the KV pool in use (vLLM counts blocks, llama.cpp cells); `kv_tokens` is
    the number of tokens the cache holds where the engine reports it (llama.cpp builds before the unified KV
    cache did; vLLM does not). Prefix-cache counters are cumulative token counts since the engine started.
    A figure the engine does not export is None.
    """

    engine: Engine
    kv_usage: float | None = None
    kv_tokens: int | None = None
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    kv_capacity_tokens: int | None = None
    cache_dtype: str | None = None
    prefix_cache_hits: float | None = None
    prefix_cache_queries: float | None = None
    requests_running: float | None = None

    @property
    def prefix_cache_hit_rate(self) -> float | None:
        if self.prefix_cache_hits is None or not self.prefix_cache_queries:
            return None
        return self.prefix_cache_hits / self.prefix_cache_queries

    @property
    def kv_tokens_used(self) -> int | None:
        """Token slots the cache holds: llama.cpp's count, or vLLM's used blocks times the block size."""
        if self.kv_tokens is not None:
            return self.kv_tokens
        if self.kv_usage is None:
            return None
        if self.block_size and self.num_gpu_blocks:
            # The gauge is used blocks / total blocks, rounded through a float: round back to whole blocks.
            return round(self.kv_usage * self.num_gpu_blocks) * self.block_size
        if self.kv_capacity_tokens:
            return round(self.kv_usage * self.kv_capacity_tokens)
        return None

    def kv_bytes_used(self, shape: KvShape, bytes_per_element: float | None = None) -> int | None:
        """KV bytes in use: the token slots held times the model's bytes per token, or None when unknown.

        Args:
            shape: the served model's KV dimensions.
            bytes_per_element: bytes per K/V element; by default from the engine's `cache_dtype`
                (vLLM reports it; llama.cpp does not, so pass the --type_k/--type_v size there).
        """
        tokens = self.kv_tokens_used
        if bytes_per_element is None and self.cache_dtype is not None:
            bytes_per_element = CACHE_DTYPE_BYTES.get(self.cache_dtype.lower())
        if tokens is None or bytes_per_element is None:
            return None
        return int(round(shape.bytes_per_token(bytes_per_element) * tokens))


def read_engine_metrics(text: str) -> EngineMetrics:
    """Pick the KV-cache figures out of a /metrics body from vLLM (V0 or V1 names) or llama.cpp's server.

    Series that repeat under other labels (one per data-parallel engine or model) are summed; a usage
    fraction is averaged over them.
    """
    samples = parse_prometheus(text)
    names = {s.name for s in samples}

    def total(*candidates: str) -> float | None:
        for name in candidates:
            values = [s.value for s in samples if s.name == name]
            if values:
                return sum(values)
        return None

    def mean(*candidates: str) -> float | None:
        for name in candidates:
            values = [s.value for s in samples if s.name == name]
            if values:
                return sum(values) / len(values)
        return None

    if any(n.startswith("vllm:") for n in names):
        config = [s for s in samples if s.name == "vllm:cache_config_info"]
        block_size, blocks, capacity, dtype = None, None, None, None
        if config:
            sizes = {_int_label([s], "block_size") for s in config}
            block_size = sizes.pop() if len(sizes) == 1 else None  # engines that disagree leave it unknown
            blocks = _int_label(config, "num_gpu_blocks")
            capacity = _int_label(config, "kv_cache_size_tokens")
            dtype = config[0].label("cache_dtype")
        if capacity is None and block_size and blocks:
            capacity = block_size * blocks
        return EngineMetrics(
            engine="vllm",
            kv_usage=mean("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),  # a fraction, despite "perc"
            block_size=block_size,
            num_gpu_blocks=blocks,
            kv_capacity_tokens=capacity,
            cache_dtype=dtype,
            prefix_cache_hits=total("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
            prefix_cache_queries=total("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
            requests_running=total("vllm:num_requests_running"),
        )
    if any(n.startswith("llamacpp:") for n in names):
        tokens = total("llamacpp:kv_cache_tokens")
        return EngineMetrics(
            engine="llamacpp",
            kv_usage=mean("llamacpp:kv_cache_usage_ratio"),
            kv_tokens=None if tokens is None else int(tokens),
            requests_running=total("llamacpp:requests_processing"),
        )
    return EngineMetrics(engine="unknown")


def _int_label(samples: Iterable[Sample], key: str) -> int | None:
    """The label summed over the series (data-parallel engines each own their blocks); None if any is not a number."""
    values = [s.label(key) for s in samples]
    if any(v is None or not v.strip().isdigit() for v in values):
        return None
    return sum(int(v) for v in values if v is not None)


def scrape(base_url: str, *, timeout_s: float = 5.0) -> EngineMetrics | None:
    """GET `base_url`/metrics and read it; None when the server has no Prometheus endpoint (404, or not that format).

    Raises OSError when the server cannot be reached at all.
    """
    try:
        with _DIRECT.open(base_url.rstrip("/") + "/metrics", timeout=timeout_s) as response:
            text = response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError:
        return None  # llama.cpp without --metrics answers 501, engines without the endpoint 404
    try:
        return read_engine_metrics(text)
    except MetricsFormatError:
        return None


@dataclass(frozen=True)
class EngineKv:
    """The KV cache an engine allocated, in its own figures: `capacity_tokens` token slots in `bytes` (None where
    the engine does not say, e.g. vLLM, whose capacity is what its memory budget held), for `slots` sequences at once."""

    capacity_tokens: int
    bytes: int | None
    slots: int | None
    source: str  # where the figures were read

    @property
    def bytes_per_token(self) -> float | None:
        return None if self.bytes is None or not self.capacity_tokens else self.bytes / self.capacity_tokens

    def sequences(self, tokens: int) -> int:
        """Sequences of `tokens` tokens that fit at once: cells // tokens, capped by the engine's sequence slots."""
        fit = self.capacity_tokens // max(tokens, 1)
        return fit if self.slots is None else min(fit, self.slots)


def kv_from_props(props: Any) -> EngineKv | None:
    """llama-server's /props: the context (n_ctx, shared by `total_slots` slots); it reports no bytes."""
    if not isinstance(props, dict):
        return None
    settings = props.get("default_generation_settings") or {}
    n_ctx = settings.get("n_ctx") if isinstance(settings, dict) else None
    slots = props.get("total_slots")
    if not isinstance(n_ctx, int) or n_ctx <= 0:
        return None
    # Each slot gets n_ctx / total_slots cells unless the server runs with --kv-unified; n_ctx is the pool either way.
    return EngineKv(n_ctx, None, slots if isinstance(slots, int) else None, "llama-server /props")


def kv_from_metrics(metrics: EngineMetrics | None) -> EngineKv | None:
    """vLLM's cache_config_info: num_gpu_blocks x block_size tokens, what its memory budget held."""
    if metrics is None or metrics.engine != "vllm" or not metrics.kv_capacity_tokens:
        return None
    return EngineKv(metrics.kv_capacity_tokens, None, None, "vllm:cache_config_info")


def read_engine_kv(base_url: str, log_text: str | None, *, timeout_s: float = 5.0) -> EngineKv | None:
    """The cache the engine at `base_url` allocated: from its launch log (llama.cpp's `llama_kv_cache: size` line,
    the only source of its bytes), else llama-server's /props; None when neither says (vLLM's figures are in
    its /metrics: kv_from_metrics)."""
    from .engine_log import kv_cache_from_log
    from .transport import get_json

    logged = kv_cache_from_log(log_text) if log_text else None
    if logged is not None:
        return EngineKv(logged.cells, logged.bytes, logged.seqs, f"llama.cpp log (K {logged.k_type}, V {logged.v_type})")
    return kv_from_props(get_json(base_url, "/props", timeout_s))
