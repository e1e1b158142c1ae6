"""The gate YAML file: parsed and validated into frozen, typed specs, or a GateError naming file, key and fix."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from . import limits
from .limits import shown
from .reader import GateError  # also this module's: callers catch `spec.GateError`
from .reader import Reader as _Reader

if TYPE_CHECKING:
    from ..changes.window import AttentionWindow
    from ..changes.prompt_layout import HistoryBudget
    from ..changes.retrievers import RetrievalSettings
    from ..changes.rope import RopeSettings
    from ..backends.served.launch import LaunchSpec
    from ..tasks import TaskSpec

KvCacheDtype = Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2", "int8", "int4"]
KvScale = Literal["token_head", "tensor", "channel"]
MemorySource = Literal["auto", "kv_bytes", "peak_bytes"]
RecallPolicy = Literal["strict", "noninferiority"]
LatencyPolicy = Literal["point", "bound"]
RepeatStatistic = Literal["min", "median"]
ModelDtype = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]
AttnImplementation = Literal["sdpa", "eager"]
BackendKind = Literal["transformers", "openai"]
ServedApi = Literal["completions", "chat"]
ServedTokenizer = Literal["local", "server"]
Packing = Literal["given", "edge"]

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"


@dataclass(frozen=True)
class ModelSpec:
    ref: str = DEFAULT_MODEL
    dtype: ModelDtype = "auto"
    device: Device = "auto"
    trust_remote_code: bool = False


@dataclass(frozen=True)
class VariantSpec:
    """One side of a gate: the long-context change it applies, to the model, its cache or its prompt."""

    name: str
    kv_cache_dtype: KvCacheDtype = "auto"
    kv_scale: KvScale = "token_head"
    # Model-level changes, applied when the model loads (one model per distinct setting):
    model: ModelSpec | None = None  # another model than the gate's (a model swap)
    dtype: ModelDtype | None = None
    attn_implementation: AttnImplementation | None = None
    rope: RopeSettings | None = None  # rope_parameters and max_position_embeddings
    # Cache-level: a sliding window with attention sinks (StreamingLLM).
    attention: AttentionWindow | None = None
    # Prompt-level changes: the same content, laid out differently.
    packing: Packing = "given"
    history: HistoryBudget | None = None
    retrieval: RetrievalSettings | None = None
    # Served: an OpenAI-compatible engine (vLLM, SGLang, TGI, llama.cpp) at base_urls, or launched per variant.
    backend: BackendKind = "transformers"
    base_urls: tuple[str, ...] = ()
    launch: LaunchSpec | None = None
    api: ServedApi = "completions"
    max_concurrency: int = 1
    tokenizer: ServedTokenizer = "local"  # whose tokenizer builds the token-exact prompts: ours, or the engine's
    kv_bytes_per_element: float | None = None  # what the engine stores per K/V element (llama.cpp q8_0: 34/32)
    # Planted regressions, for self-check gates that prove a gate catches what it should:
    planted_decode_delay: float = 0.0  # extra wall time per decode step, as a fraction of the step's own time
    planted_kv_copies: int = 1  # hold this many copies of the KV cache (real memory)
    planted_window: int | None = None  # after prefill, keep only the last N tokens' K/V

    def model_spec(self, gate_model: ModelSpec) -> ModelSpec:
        """The model this side runs: the gate's, or its own, with its own dtype where it sets one."""
        base = self.model or gate_model
        return base if self.dtype is None else dataclasses.replace(base, dtype=self.dtype)

    def load_key(self, gate_model: ModelSpec) -> tuple[Any, ...]:
        """Sides with equal keys share one loaded model; anything applied at load time is in it."""
        if self.backend == "openai":
            return (self.backend, self.model_spec(gate_model), self.base_urls, self.launch, self.api, self.max_concurrency,
                    self.tokenizer, self.kv_bytes_per_element)
        return (self.model_spec(gate_model), self.rope, self.attn_implementation)

    def computation_settings(self, baseline: VariantSpec) -> tuple[str, ...]:
        """The gate keys in which this side differs from `baseline` by a setting that should change what the
        model computes on the same prompt (not the prompt itself, not the weights): what a no-op guard checks."""
        pairs = (
            ("kv_cache_dtype", self.kv_cache_dtype != baseline.kv_cache_dtype
             or (self.kv_cache_dtype != "auto" and self.kv_scale != baseline.kv_scale)),
            ("rope_parameters", self.rope != baseline.rope),
            ("attention", self.attention != baseline.attention),
            ("dtype", self.dtype != baseline.dtype),
            ("attn_implementation", self.attn_implementation != baseline.attn_implementation),
            ("launch", self.launch != baseline.launch),
        )
        return tuple(key for key, differs in pairs if differs)

    @property
    def changes_prompt(self) -> bool:
        return self.packing != "given" or self.history is not None or self.retrieval is not None

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["model"] = None if self.model is None else dataclasses.asdict(self.model)
        data["rope"] = None if self.rope is None else self.rope.as_record()
        data["attention"] = None if self.attention is None else dataclasses.asdict(self.attention)
        data["history"] = None if self.history is None else dataclasses.asdict(self.history)
        data["retrieval"] = None if self.retrieval is None else self.retrieval.to_dict()
        data["launch"] = None if self.launch is None else dataclasses.asdict(self.launch)
        data["base_urls"] = list(self.base_urls)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantSpec:
        values = dict(data)
        if values.get("model") is not None:
            values["model"] = ModelSpec(**values["model"])
        if values.get("rope") is not None:
            from ..changes.rope import parse_rope

            values["rope"] = parse_rope(values["rope"]["rope_parameters"], values["rope"].get("max_position_embeddings"))
        if values.get("attention") is not None:
            from ..changes.window import AttentionWindow

            values["attention"] = AttentionWindow(**values["attention"])
        if values.get("history") is not None:
            from ..changes.prompt_layout import HistoryBudget

            values["history"] = HistoryBudget(**values["history"])
        if values.get("retrieval") is not None:
            from ..changes.retrievers import parse_retrieval

            values["retrieval"] = parse_retrieval(values["retrieval"])
        if values.get("launch") is not None:
            from ..backends.served.launch import LaunchSpec

            values["launch"] = LaunchSpec(**values["launch"])
        values["base_urls"] = tuple(values.get("base_urls", ()))
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True)
class LossSpec:
    """Next-token loss by position over one long seeded text per side (see loss_curve)."""

    tokens: int
    buckets: int = 8
    seed: int = 0


@dataclass(frozen=True)
class TimingSpec:
    """Which cells are timed (full, uncached runs; latency metrics read them): those whose length, depth and
    seed are all listed (None lists every value). Untimed cells only answer, and may reuse cached prefixes."""

    lengths: tuple[int, ...] | None = None
    depths: tuple[float, ...] | None = None
    seeds: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SweepSpec:
    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    middle: tuple[float, float] = (0.25, 0.75)
    max_new_tokens: int = 24
    tasks: tuple[TaskSpec, ...] = ()  # the task families swept (default: niah)
    repeats: int = 1  # timed, full runs of each prompt
    repeat_statistic: RepeatStatistic = "min"  # how a cell's repeated timings become one number
    cell_timeout_s: float | None = None
    loss: LossSpec | None = None
    timing: TimingSpec = TimingSpec()
    beyond_trained_positions: bool = False  # lengths past a side's positions are meant (the start-up check allows them)

    def timed(self, length: int, depth: float, seed: int) -> bool:
        t = self.timing
        return (
            (t.lengths is None or length in t.lengths)
            and (t.depths is None or any(abs(depth - d) < 1e-9 for d in t.depths))
            and (t.seeds is None or seed in t.seeds)
        )


@dataclass(frozen=True)
class Thresholds:
    middle_recall_min_delta: float = 0.0
    p95_latency_ratio_max: float = 1.10
    memory_ratio_max: float = 1.05
    memory_source: MemorySource = "auto"
    middle_recall_policy: RecallPolicy = "strict"
    middle_recall_margin: float = 0.0
    middle_recall_alpha: float = 0.05
    p95_latency_policy: LatencyPolicy = "point"
    p95_prefill_ratio_max: float | None = None
    p95_prefill_policy: LatencyPolicy = "point"
    p95_decode_ratio_max: float | None = None
    p95_decode_policy: LatencyPolicy = "point"
    latency_confidence: float = 0.95
    effective_length_ratio_min: float | None = None
    effective_length_recall: float = 0.85  # the recall a length must hold to count as effective
    loss_ratio_max: float | None = None  # worst position bucket's candidate/baseline mean next-token loss


@dataclass(frozen=True)
class GateSpec:
    name: str
    path: Path | None
    model: ModelSpec
    baseline: VariantSpec
    candidate: VariantSpec
    sweep: SweepSpec
    thresholds: Thresholds
    report: Path | None = None
    results: Path | None = None
    sha256: str | None = None
    captured_baseline: Path | None = None

    @property
    def variants(self) -> tuple[VariantSpec, VariantSpec]:
        return (self.baseline, self.candidate)

    def with_model(self, ref: str) -> GateSpec:
        return dataclasses.replace(self, model=dataclasses.replace(self.model, ref=ref))

    def to_dict(self) -> dict[str, Any]:
        """The resolved settings, as recorded in results JSON."""
        data = dataclasses.asdict(self)
        data["baseline"], data["candidate"] = self.baseline.to_dict(), self.candidate.to_dict()
        for key in ("path", "report", "results", "captured_baseline"):
            data[key] = None if data[key] is None else str(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateSpec:
        """Inverse of `to_dict`: rebuild the spec recorded in a results file, to recompute its decision."""
        sweep = dict(data["sweep"])
        for key in ("lengths", "depths", "seeds", "middle"):
            sweep[key] = tuple(sweep[key])
        sweep["tasks"] = tuple(_task_from_record(t) for t in sweep["tasks"])
        sweep["loss"] = None if sweep.get("loss") is None else LossSpec(**sweep["loss"])
        timing = sweep.get("timing") or {}
        sweep["timing"] = TimingSpec(**{k: None if v is None else tuple(v) for k, v in timing.items()})

        def path(key: str) -> Path | None:
            return None if data.get(key) is None else Path(data[key])

        return cls(
            name=data["name"],
            path=path("path"),
            model=ModelSpec(**data["model"]),
            baseline=VariantSpec.from_dict(data["baseline"]),
            candidate=VariantSpec.from_dict(data["candidate"]),
            sweep=SweepSpec(**sweep),
            thresholds=Thresholds(**data["thresholds"]),
            report=path("report"),
            results=path("results"),
            sha256=data.get("sha256"),
            captured_baseline=path("captured_baseline"),
        )


def _task_from_record(record: Any) -> TaskSpec:
    from ..tasks import TaskSpec, parse_task

    if isinstance(record, str):  # results written before task families recorded their options
        return parse_task(record)
    return TaskSpec(record["family"], record["name"], tuple((k, v) for k, v in record["options"]))


def _model(r: _Reader, raw: Any, key: str = "model") -> ModelSpec:
    if raw is None:
        return ModelSpec()
    if isinstance(raw, str):
        return ModelSpec(ref=r.string(raw, key))
    m = r.mapping(raw, key, {"ref": "", "dtype": "", "device": "", "trust_remote_code": ""})
    return ModelSpec(
        ref=r.string(m.get("ref", DEFAULT_MODEL), f"{key}.ref"),
        dtype=r.choice(m.get("dtype", "auto"), f"{key}.dtype", get_args(ModelDtype)),  # type: ignore[arg-type]
        device=r.choice(m.get("device", "auto"), f"{key}.device", get_args(Device)),  # type: ignore[arg-type]
        trust_remote_code=r.boolean(m.get("trust_remote_code", False), f"{key}.trust_remote_code"),
    )


VARIANT_KEYS = (
    "kv_cache_dtype", "kv_scale", "model", "dtype", "attn_implementation", "rope_parameters", "max_position_embeddings",
    "attention", "packing", "history", "retrieval", "backend", "base_url", "base_urls", "launch", "api", "max_concurrency",
    "tokenizer", "kv_bytes_per_element", "planted",
)


def _variant(r: _Reader, raw: Any, name: str) -> VariantSpec:
    v = r.mapping(raw if raw is not None else {}, name, {k: "" for k in VARIANT_KEYS})
    planted = r.mapping(v.get("planted", {}), f"{name}.planted", {"decode_delay": "", "kv_copies": "", "window": ""})
    window = planted.get("window")
    return VariantSpec(
        name=name,
        kv_cache_dtype=r.choice(v.get("kv_cache_dtype", "auto"), f"{name}.kv_cache_dtype", get_args(KvCacheDtype)),  # type: ignore[arg-type]
        kv_scale=r.choice(v.get("kv_scale", "token_head"), f"{name}.kv_scale", get_args(KvScale)),  # type: ignore[arg-type]
        model=None if v.get("model") is None else _model(r, v["model"], f"{name}.model"),
        dtype=None if v.get("dtype") is None else r.choice(v["dtype"], f"{name}.dtype", get_args(ModelDtype)),  # type: ignore[arg-type]
        attn_implementation=None if v.get("attn_implementation") is None else r.choice(  # type: ignore[arg-type]
            v["attn_implementation"], f"{name}.attn_implementation", get_args(AttnImplementation)),
        rope=_rope(r, v, name),
        attention=_attention(r, v.get("attention"), name),
        packing=r.choice(v.get("packing", "given"), f"{name}.packing", get_args(Packing)),  # type: ignore[arg-type]
        history=_history(r, v.get("history"), name),
        retrieval=_retrieval(r, v.get("retrieval"), name),
        **_served(r, v, name),
        planted_decode_delay=r.number(planted.get("decode_delay", 0.0), f"{name}.planted.decode_delay", low=0.0, high=100.0),
        planted_kv_copies=r.integer(planted.get("kv_copies", 1), f"{name}.planted.kv_copies", low=1),
        planted_window=None if window is None else r.integer(window, f"{name}.planted.window", low=1),
    )


def _served(r: _Reader, v: dict[str, Any], name: str) -> dict[str, Any]:
    """A served variant: where its engine is (base_url(s)), or how to start it (launch), and how to talk to it."""
    kind = r.choice(v.get("backend", "transformers"), f"{name}.backend", get_args(BackendKind))
    keys = [k for k in ("base_url", "base_urls", "launch", "api", "max_concurrency", "tokenizer", "kv_bytes_per_element") if k in v]
    if kind != "openai":
        if keys:
            raise r.fail(f"{name}.{keys[0]}", "only applies to a served model", f"add {name}.backend: openai, or remove it")
        return {}
    urls: list[Any] = []
    if "base_url" in v:
        urls = [r.string(v["base_url"], f"{name}.base_url")]
    if "base_urls" in v:
        if urls:
            raise r.fail(f"{name}.base_urls", "is given beside base_url", "use one of base_url and base_urls")
        urls = [r.string(u, f"{name}.base_urls") for u in r.listing(v["base_urls"], f"{name}.base_urls")]
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise r.fail(f"{name}.base_url", f"{url!r} is not an http(s) URL", "write e.g. http://127.0.0.1:8000 (without /v1)")
    launch = None
    if "launch" in v:
        from ..backends.served.launch import LaunchError, parse_launch

        launch = _delegated(r, name, LaunchError, parse_launch, v["launch"])
    if bool(urls) == (launch is not None):
        raise r.fail(f"{name}.backend", "openai needs either base_url(s) or launch", "point at a running server, or give launch: {command: ...}")
    # kv_cache_dtype stays allowed: it says what the engine stores, for the analytic KV estimate.
    for key in ("rope_parameters", "max_position_embeddings", "attention", "attn_implementation", "dtype", "packing", "history"):
        if key in v:
            raise r.fail(f"{name}.{key}", "is applied by the engine of a served model, not by pytest-longctx",
                         "put the engine's flag in launch.command (e.g. --kv-cache-dtype fp8)")
    return {
        "backend": kind, "base_urls": tuple(urls), "launch": launch,
        "api": r.choice(v.get("api", "completions"), f"{name}.api", get_args(ServedApi)),
        "max_concurrency": r.integer(v.get("max_concurrency", 1), f"{name}.max_concurrency", low=1),
        "tokenizer": r.choice(v.get("tokenizer", "local"), f"{name}.tokenizer", get_args(ServedTokenizer)),
        "kv_bytes_per_element": _bytes_per_element(r, v.get("kv_bytes_per_element"), f"{name}.kv_bytes_per_element"),
    }


_FRACTION = re.compile(r"\d{1,9}(\.\d{1,9})?(/\d{1,9}(\.\d{1,9})?)?")


def _bytes_per_element(r: _Reader, value: Any, key: str) -> float | None:
    """A number, or a fraction as engines document block formats ("34/32": 32 int8 values and an fp16 scale)."""
    if value is None:
        return None
    if isinstance(value, str):
        from fractions import Fraction

        text = value.replace(" ", "")
        try:
            # Digits and one slash only: Fraction("1e999999999") would spend minutes building the integer.
            if not _FRACTION.fullmatch(text):
                raise ValueError(text)
            value = float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise r.fail(key, f"{shown(value)} is not a number", "write bytes per K/V element, e.g. 2 (f16) or 34/32 (llama.cpp q8_0)") from None
    return r.number(value, key, low=0.01, high=8.0)


def _rope(r: _Reader, v: dict[str, Any], name: str) -> RopeSettings | None:
    if v.get("rope_parameters") is None and v.get("max_position_embeddings") is None:
        return None
    from ..changes.rope import RopeError, parse_rope

    # max_position_embeddings alone keeps the model's own RoPE and changes only the length it accepts.
    return _delegated(r, name, RopeError, parse_rope, v.get("rope_parameters") or {}, v.get("max_position_embeddings"))  # type: ignore[no-any-return]


def _attention(r: _Reader, raw: Any, name: str) -> AttentionWindow | None:
    if raw is None:
        return None
    from ..changes.window import AttentionWindow

    a = r.mapping(raw, f"{name}.attention", {"window": "", "sink_tokens": ""})
    if "window" not in a:
        raise r.fail(f"{name}.attention.window", "is missing", "add window: 1024 (the recent tokens each query sees)")
    return AttentionWindow(
        window=r.integer(a["window"], f"{name}.attention.window", low=1),
        sink_tokens=r.integer(a.get("sink_tokens", 0), f"{name}.attention.sink_tokens", low=0),
    )


def _delegated(r: _Reader, name: str, error: type[Exception], parse: Any, *args: Any) -> Any:
    """Run a component's own parser; its error (key, problem, fix) becomes a GateError under the variant's key."""
    try:
        return parse(*args)
    except error as exc:
        raise r.fail(f"{name}.{exc.key}", exc.problem, exc.fix) from None  # type: ignore[attr-defined]


def _history(r: _Reader, raw: Any, name: str) -> HistoryBudget | None:
    if raw is None:
        return None
    from ..changes.prompt_layout import LayoutError, parse_history

    return _delegated(r, name, LayoutError, parse_history, raw)  # type: ignore[no-any-return]


def _retrieval(r: _Reader, raw: Any, name: str) -> RetrievalSettings | None:
    if raw is None:
        return None
    from ..changes.retrievers import RetrievalError, parse_retrieval

    return _delegated(r, name, RetrievalError, parse_retrieval, raw)  # type: ignore[no-any-return]


SWEEP_KEYS = ("lengths", "depths", "seeds", "middle", "max_new_tokens", "tasks", "repeats", "repeat_statistic", "cell_timeout_s",
              "loss", "timing", "beyond_trained_positions")


def _sweep(r: _Reader, raw: Any) -> SweepSpec:
    s = r.mapping(raw, "sweep", {k: "" for k in SWEEP_KEYS})
    if "lengths" not in s or "depths" not in s:
        raise r.fail("sweep", "needs both lengths and depths", "add sweep.lengths: [1024, ...] and sweep.depths: [0.0, ..., 1.0]")
    lengths = tuple(r.integer(x, "sweep.lengths", low=64, high=limits.MAX_LENGTH_TOKENS)
                    for x in r.listing(s["lengths"], "sweep.lengths", most=limits.MAX_LENGTHS))
    depths = tuple(r.number(x, "sweep.depths", low=0.0, high=1.0) for x in r.listing(s["depths"], "sweep.depths", most=limits.MAX_DEPTHS))
    _distinct_depth_ids(r, depths)
    seeds = tuple(r.integer(x, "sweep.seeds", high=limits.MAX_SEED)
                  for x in r.listing(s.get("seeds", [0]), "sweep.seeds", most=limits.MAX_SEEDS))
    middle_raw = s.get("middle", [0.25, 0.75])
    if not isinstance(middle_raw, list) or len(middle_raw) != 2:
        raise r.fail("sweep.middle", f"expected [low, high], got {shown(middle_raw)}", "write sweep.middle: [0.25, 0.75]")
    lo, hi = (r.number(x, "sweep.middle", low=0.0, high=1.0) for x in middle_raw)
    if lo > hi:
        raise r.fail("sweep.middle", f"low {lo} is above high {hi}", "write the band as [low, high]")
    if not any(lo <= d <= hi for d in depths):
        raise r.fail("sweep.depths", f"no depth falls inside the middle band [{lo}, {hi}]", "add a middle depth such as 0.5")
    tasks = _tasks(r, s.get("tasks", ["niah"]))
    _bounded_cells(r, tasks, lengths, depths, seeds)
    beyond = s.get("beyond_trained_positions", False)
    return SweepSpec(
        lengths=lengths,
        depths=depths,
        seeds=seeds,
        middle=(lo, hi),
        max_new_tokens=r.integer(s.get("max_new_tokens", 24), "sweep.max_new_tokens", low=1, high=limits.MAX_NEW_TOKENS),
        tasks=tasks,
        repeats=r.integer(s.get("repeats", 1), "sweep.repeats", low=1, high=limits.MAX_REPEATS),
        repeat_statistic=r.choice(s.get("repeat_statistic", "min"), "sweep.repeat_statistic", get_args(RepeatStatistic)),  # type: ignore[arg-type]
        cell_timeout_s=None if s.get("cell_timeout_s") is None else r.number(
            s["cell_timeout_s"], "sweep.cell_timeout_s", low=0.001, high=limits.MAX_CELL_TIMEOUT_S),
        loss=_loss(r, s.get("loss")),
        timing=_timing(r, s.get("timing"), lengths, depths, seeds),
        beyond_trained_positions=r.boolean(beyond, "sweep.beyond_trained_positions"),
    )


def _distinct_depth_ids(r: _Reader, depths: tuple[float, ...]) -> None:
    """Node ids show a depth to two decimals (`d0.50`); two depths that print alike would share every id, and
    the second cell's result would be filed under the first. Refused rather than renamed: ids are what users
    select with -k and what earlier results were recorded under."""
    seen: dict[str, float] = {}
    for depth in depths:
        label = f"{depth:.{limits.DEPTH_ID_DECIMALS}f}"
        if label in seen:
            raise r.fail("sweep.depths", f"{seen[label]:g} and {depth:g} both show as d{label} in node ids",
                         "use depths at least 0.01 apart")
        seen[label] = depth


def _bounded_cells(r: _Reader, tasks: tuple[TaskSpec, ...], lengths: tuple[int, ...], depths: tuple[float, ...],
                   seeds: tuple[int, ...]) -> None:
    from ..tasks import uses_depth

    cells = sum(len(lengths) * (len(depths) if uses_depth(t) else 1) * len(seeds) for t in tasks)
    if cells > limits.MAX_CELLS:
        raise r.fail("sweep", f"plans {cells:,} cells per side (tasks x lengths x depths x seeds)",
                     f"sweep at most {limits.MAX_CELLS:,} cells per side, e.g. fewer seeds")


def _timing(r: _Reader, raw: Any, lengths: tuple[int, ...], depths: tuple[float, ...], seeds: tuple[int, ...]) -> TimingSpec:
    if raw is None:
        return TimingSpec()
    m = r.mapping(raw, "sweep.timing", {"lengths": "", "depths": "", "seeds": ""})
    picked: dict[str, Any] = {}
    for key, swept in (("lengths", lengths), ("depths", depths), ("seeds", seeds)):
        if m.get(key) is None:
            continue
        where = f"sweep.timing.{key}"
        values = tuple(r.number(v, where) if key == "depths" else r.integer(v, where) for v in r.listing(m[key], where, most=len(swept)))
        for value in values:
            if value not in swept:
                raise r.fail(where, f"{shown(value)} is not one of the swept {key} {shown(list(swept))}", f"time a subset of sweep.{key}")
        picked[key] = values
    return TimingSpec(**picked)


def _loss(r: _Reader, raw: Any) -> LossSpec | None:
    if raw is None:
        return None
    m = r.mapping(raw, "sweep.loss", {"tokens": "", "buckets": "", "seed": ""})
    if "tokens" not in m:
        raise r.fail("sweep.loss.tokens", "is missing", "add tokens: 8192 (the length of the text the loss is measured over)")
    tokens = r.integer(m["tokens"], "sweep.loss.tokens", low=64, high=limits.MAX_LENGTH_TOKENS)
    buckets = r.integer(m.get("buckets", 8), "sweep.loss.buckets", low=1, high=limits.MAX_LOSS_BUCKETS)
    if buckets > tokens // 8:
        raise r.fail("sweep.loss.buckets", f"{buckets} buckets over {tokens} tokens leaves under 8 tokens each", "use fewer buckets")
    return LossSpec(tokens=tokens, buckets=buckets, seed=r.integer(m.get("seed", 0), "sweep.loss.seed", high=limits.MAX_SEED))


def _tasks(r: _Reader, raw: Any) -> tuple[TaskSpec, ...]:
    from ..tasks import TaskError, parse_task

    specs = []
    for i, entry in enumerate(r.listing(raw, "sweep.tasks", most=limits.MAX_TASKS)):
        try:
            specs.append(parse_task(entry))
        except TaskError as exc:
            raise r.fail(f"sweep.tasks[{i}]" + (f".{exc.key}" if exc.key else ""), exc.problem, exc.fix) from None
    names = [spec.name for spec in specs]
    for name in names:
        if names.count(name) > 1:
            raise r.fail("sweep.tasks", f"two entries are both named {shown(name)}", "give each a distinct `name:`")
    return tuple(specs)


def _thresholds(r: _Reader, raw: Any) -> Thresholds:
    keys = {"middle_recall": "", "p95_latency_ratio": "", "p95_prefill_ratio": "", "p95_decode_ratio": "", "memory_ratio": "",
            "effective_length_ratio": "", "loss_ratio": ""}
    t = r.mapping(raw if raw is not None else {}, "thresholds", keys)
    mr = r.mapping(t.get("middle_recall", {}), "thresholds.middle_recall", {"min_delta": "", "policy": "", "margin": "", "alpha": ""})
    mem = r.mapping(t.get("memory_ratio", {}), "thresholds.memory_ratio", {"max": "", "source": ""})
    eff = r.mapping(t.get("effective_length_ratio", {}), "thresholds.effective_length_ratio", {"min": "", "recall": ""})
    loss = r.mapping(t.get("loss_ratio", {}), "thresholds.loss_ratio", {"max": ""})
    latency: dict[str, tuple[float | None, str, float]] = {}
    for name, default in (("p95_latency_ratio", 1.10), ("p95_prefill_ratio", None), ("p95_decode_ratio", None)):
        key = f"thresholds.{name}"
        # One confidence level serves every latency interval; it is set on the end-to-end threshold.
        allowed = {"max": "", "policy": "", "confidence": ""} if name == "p95_latency_ratio" else {"max": "", "policy": ""}
        lat = r.mapping(t.get(name, {}), key, allowed)
        bound = lat.get("max", default)
        latency[name] = (
            None if bound is None else r.number(bound, f"{key}.max", low=0.0),
            r.choice(lat.get("policy", "point"), f"{key}.policy", get_args(LatencyPolicy)),
            r.number(lat.get("confidence", 0.95), f"{key}.confidence", low=0.5, high=0.999),
        )
    policy = r.choice(mr.get("policy", "strict"), "thresholds.middle_recall.policy", get_args(RecallPolicy))
    if policy == "noninferiority" and "margin" not in mr:
        raise r.fail("thresholds.middle_recall.margin", "is required by policy noninferiority", "add margin: 0.05 (the recall loss you accept)")
    return Thresholds(
        middle_recall_min_delta=r.number(mr.get("min_delta", 0.0), "thresholds.middle_recall.min_delta", low=-1.0, high=1.0),
        p95_latency_ratio_max=latency["p95_latency_ratio"][0],  # type: ignore[arg-type]
        memory_ratio_max=r.number(mem.get("max", 1.05), "thresholds.memory_ratio.max", low=0.0),
        memory_source=r.choice(mem.get("source", "auto"), "thresholds.memory_ratio.source", get_args(MemorySource)),  # type: ignore[arg-type]
        middle_recall_policy=policy,  # type: ignore[arg-type]
        middle_recall_margin=r.number(mr.get("margin", 0.0), "thresholds.middle_recall.margin", low=0.0, high=1.0),
        middle_recall_alpha=r.number(mr.get("alpha", 0.05), "thresholds.middle_recall.alpha", low=0.001, high=0.5),
        p95_latency_policy=latency["p95_latency_ratio"][1],  # type: ignore[arg-type]
        p95_prefill_ratio_max=latency["p95_prefill_ratio"][0],
        p95_prefill_policy=latency["p95_prefill_ratio"][1],  # type: ignore[arg-type]
        p95_decode_ratio_max=latency["p95_decode_ratio"][0],
        p95_decode_policy=latency["p95_decode_ratio"][1],  # type: ignore[arg-type]
        latency_confidence=latency["p95_latency_ratio"][2],
        effective_length_ratio_min=None if eff.get("min") is None else r.number(eff["min"], "thresholds.effective_length_ratio.min", low=0.0),
        effective_length_recall=r.number(eff.get("recall", 0.85), "thresholds.effective_length_ratio.recall", low=0.0, high=1.0),
        loss_ratio_max=None if loss.get("max") is None else r.number(loss["max"], "thresholds.loss_ratio.max", low=0.0),
    )


TOP_LEVEL = ("name", "model", "baseline", "candidate", "sweep", "thresholds", "report", "results", "captured_baseline")


def parse_gate(data: Any, *, source: str = "<gate>", base_dir: Path | None = None, sha256: str | None = None) -> GateSpec:
    """Validate parsed YAML into a GateSpec; relative output paths resolve against `base_dir`."""
    r = _Reader(source)
    if data is None:
        raise r.fail("", "the gate is empty", "write name:, baseline:, candidate: and sweep: (see gates/fp8.yaml)")
    top = r.mapping(data, "", {k: "" for k in TOP_LEVEL})
    for required in ("name", "baseline", "candidate", "sweep"):
        if required not in top:
            raise r.fail(required, "is missing", f"add `{required}:` (see gates/fp8.yaml for the full shape)")
    name = r.name(top["name"], "name")

    def out_path(key: str) -> Path | None:
        if top.get(key) is None:
            return None
        p = Path(r.string(top[key], key))
        return p if p.is_absolute() or base_dir is None else base_dir / p

    baseline, candidate = _variant(r, top["baseline"], "baseline"), _variant(r, top["candidate"], "candidate")
    sweep, thresholds = _sweep(r, top["sweep"]), _thresholds(r, top.get("thresholds"))
    _check_combinations(r, (baseline, candidate), sweep, thresholds)
    return GateSpec(
        name=name,
        path=Path(source) if source != "<gate>" else None,
        model=_model(r, top.get("model")),
        baseline=baseline,
        candidate=candidate,
        sweep=sweep,
        thresholds=thresholds,
        report=out_path("report"),
        results=out_path("results"),
        sha256=sha256,
        captured_baseline=_captured_path(r, top, source),
    )


def _check_combinations(r: _Reader, variants: tuple[VariantSpec, ...], sweep: SweepSpec, thresholds: Thresholds) -> None:
    """Settings that are each valid but cannot go together, caught before any model loads."""
    from ..tasks import FAMILIES

    for v in variants:
        if v.attention is not None and v.planted_window is not None:
            raise r.fail(f"{v.name}.planted.window", "cannot be combined with attention", "use attention: {window: N} alone")
        if v.attention is not None and sweep.loss is not None:
            raise r.fail("sweep.loss", f"is not measured under {v.name}.attention (the loss pass has no windowed mask)",
                         "drop sweep.loss from this gate, or measure the loss in a gate without attention")
        if v.packing != "given" and not any(FAMILIES[t.family].arranges for t in sweep.tasks):
            raise r.fail(f"{v.name}.packing", "needs a task with documents to arrange", "add multi_doc_qa to sweep.tasks")
        if v.history is not None and not any(FAMILIES[t.family].takes_history for t in sweep.tasks):
            raise r.fail(f"{v.name}.history", "needs a task with a chat history", "add conversation to sweep.tasks")
    from ..tasks import uses_depth

    if not any(uses_depth(t) for t in sweep.tasks):
        raise r.fail("sweep.tasks", "has no family where the evidence has a position, so middle-depth recall is undefined",
                     "add a positioned family such as niah or multi_doc_qa beside the aggregation ones")
    if thresholds.loss_ratio_max is not None and sweep.loss is None:
        raise r.fail("thresholds.loss_ratio", "needs a loss curve to compare", "add sweep.loss: {tokens: 8192, buckets: 8}")


def _captured_path(r: _Reader, top: dict[str, Any], source: str) -> Path | None:
    """A captured baseline lives next to its gate: a relative path resolves against the gate file's folder."""
    if top.get("captured_baseline") is None:
        return None
    p = Path(r.string(top["captured_baseline"], "captured_baseline"))
    return p if p.is_absolute() or source == "<gate>" else Path(source).parent / p


def load_gate(path: str | Path, *, base_dir: Path | None = None) -> GateSpec:
    """Read and validate a gate file. Output paths in it are relative to `base_dir` (default: the cwd).

    Bounded whatever the file holds (docs/limits.md): its size, YAML nodes, nesting, aliases and the size they
    expand to are capped before anything is built from it; duplicate keys and .nan/.inf are refused.
    """
    import yaml

    from .document import DocumentError, decode_gate_text, load_yaml, read_gate_bytes

    p = Path(path)
    try:
        raw = read_gate_bytes(p)
        data = load_yaml(decode_gate_text(raw))
    except OSError as exc:
        raise GateError(f"{p}: cannot read the gate file ({exc.strerror}). Fix: pass an existing YAML file to --longctx-gate.") from None
    except DocumentError as exc:
        raise _Reader(str(p)).fail(exc.key, exc.problem, exc.fix) if exc.key else GateError(f"{p}: {exc}.") from None
    except yaml.YAMLError as exc:
        raise GateError(f"{p}: not valid YAML ({_one_line(exc)}). Fix: check indentation and quoting.") from None
    return parse_gate(data, source=str(p), base_dir=base_dir or Path.cwd(), sha256=hashlib.sha256(raw).hexdigest())


def _one_line(exc: Exception) -> str:
    """A YAML error's problem and place, on one line and short (its text quotes the offending line)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + shown(" ".join(str(problem).split()))[1:-1]
