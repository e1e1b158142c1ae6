"""The gate YAML file: parsed and validated into frozen, typed specs, or a GateError naming file, key and fix."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from . import limits
from .limits import shown
from .model import DEFAULT_MODEL, ModelSpec
from .reader import GateError  # also this module's: callers catch `spec.GateError`
from .reader import Reader as _Reader

if TYPE_CHECKING:
    from ..changes.base import CachePlan, Change, LoadPlan
    from ..changes.served import ServedEngine
    from ..tasks import TaskSpec

__all__ = ["DEFAULT_MODEL", "GateError", "GateSpec", "ModelSpec", "SweepSpec", "Thresholds", "VariantSpec", "load_gate", "parse_gate"]

MemorySource = Literal["auto", "kv_bytes", "peak_bytes"]
RecallPolicy = Literal["strict", "noninferiority"]
LatencyPolicy = Literal["point", "bound"]
RepeatStatistic = Literal["min", "median"]


@dataclass(frozen=True)
class VariantSpec:
    """One side of a gate: its name and the changes it applies (to the model, its cache, its prompt or its engine).

    Every hook of the changes is asked in the registry's composition order; nothing here knows which kinds exist.
    """

    name: str
    changes: tuple[Change, ...] = ()

    @classmethod
    def of(cls, name: str, **settings: Any) -> VariantSpec:
        """A side from gate keys, as a gate file would give them: `VariantSpec.of("c", kv_cache_dtype="fp8")`.

        Raises:
            GateError: naming the key, the problem and the fix.
        """
        from ..changes.base import ChangeError
        from ..changes.registry import parse_side

        try:
            return cls(name, parse_side(settings))
        except ChangeError as exc:
            raise GateError(f"<settings>: key '{name}.{exc.key}': {exc.problem}. Fix: {exc.fix}.") from None

    def find(self, kind: str) -> Change | None:
        """This side's change of `kind` (a registry name such as "kv_quant"), or None."""
        return next((c for c in self.changes if c.kind == kind), None)

    @property
    def served(self) -> ServedEngine | None:
        """The engine this side runs on, None for the in-process model."""
        return next((s for s in (c.served() for c in self.changes) if s is not None), None)

    @property
    def backend(self) -> str:
        return "transformers" if self.served is None else "openai"

    def load_plan(self, gate_model: ModelSpec) -> LoadPlan:
        from ..changes.base import LoadPlan

        plan = LoadPlan(model=gate_model)
        for change in self.changes:
            plan = change.load(plan)
        return plan

    def model_spec(self, gate_model: ModelSpec) -> ModelSpec:
        """The model this side runs: the gate's, or its own, with its own dtype where it sets one."""
        return self.load_plan(gate_model).model

    def load_key(self, gate_model: ModelSpec) -> tuple[Any, ...]:
        """Sides with equal keys share one loaded model; anything applied at load time is in it."""
        if self.served is not None:
            return ("served", self.model_spec(gate_model), self.served)
        return ("in-process", self.load_plan(gate_model))

    def cache_plan(self) -> CachePlan:
        from ..changes.base import CachePlan

        plan = CachePlan()
        for change in self.changes:
            plan = change.cache(plan)
        return plan

    @property
    def changes_prompt(self) -> bool:
        return any(c.stage == "prompt" for c in self.changes)

    @property
    def changes_tokens(self) -> bool:
        """Whether this side's prompt token ids differ from another's by design (see Change.changes_tokens)."""
        return any(c.changes_tokens for c in self.changes)

    def prompt_key(self) -> tuple[Any, ...]:
        """What makes this side's prompts differ from another's built with the same tokenizer."""
        return tuple(c for c in self.changes if c.stage == "prompt")

    def computation_settings(self, baseline: VariantSpec) -> tuple[str, ...]:
        """The gate keys in which this side differs from `baseline` by a setting that should change what the
        model computes on the same prompt (not the prompt itself, not the weights): what a no-op guard checks."""
        both = (*self.changes, *baseline.changes)
        kinds = list(dict.fromkeys(c.kind for c in both if c.changes_computation()))
        return tuple(
            next(c for c in both if c.kind == kind).keys[0] for kind in kinds if self.find(kind) != baseline.find(kind)
        )

    def describe(self) -> tuple[tuple[str, str], ...]:
        """(setting, text) for each setting this side changes, for the report and summaries."""
        return tuple(row for c in self.changes for row in c.describe())

    def to_dict(self) -> dict[str, Any]:
        """The side as results JSON records it: its changes' settings under their gate keys, their kinds, and
        how each is described (so renderers need not import the changes)."""
        data: dict[str, Any] = {"name": self.name, "changes": [c.kind for c in self.changes]}
        for change in self.changes:
            data.update(change.record())
        data["described"] = [list(row) for row in self.describe()]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VariantSpec:
        from ..changes.registry import from_records

        return cls(data["name"], from_records(data))


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
class SequentialSpec:
    """A sweep run in looks of `batch` seeds (0, 1, ... up to `max_seeds`), stopping once every check is decided.

    `alpha` is the gate's false-reject rate over all looks and checks, split evenly among them (Bonferroni; see
    docs/statistics.md)."""

    batch: int
    max_seeds: int
    alpha: float = 0.05

    @property
    def planned_looks(self) -> int:
        return -(-self.max_seeds // self.batch)

    def seeds_through(self, look: int) -> tuple[int, ...]:
        """The seeds read at look `look` (1-based): every seed of that look and the looks before it."""
        return tuple(range(min(look * self.batch, self.max_seeds)))

    def look_of(self, seed: int) -> int:
        return seed // self.batch + 1


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
    sequential: SequentialSpec | None = None
    require_sensitivity: bool = False  # a sweep where no task and length can show a recall change is incomplete
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
    answer_logprob_max_drop: float | None = None  # nats of mean answer log-probability the candidate may lose
    answer_logprob_policy: LatencyPolicy = "point"


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
        sweep["sequential"] = None if sweep.get("sequential") is None else SequentialSpec(**sweep["sequential"])

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
    from ..changes.base import ChangeError
    from .model import parse_model

    try:
        return parse_model(raw, key)
    except ChangeError as exc:
        raise r.fail(exc.key, exc.problem, exc.fix) from None


def _variant(r: _Reader, raw: Any, name: str) -> VariantSpec:
    """A side's mapping into its changes; every key belongs to one registered change kind."""
    from ..changes.base import ChangeError
    from ..changes.registry import parse_side

    side = {} if raw is None else raw
    if not isinstance(side, dict):
        raise r.fail(name, f"expected a mapping, got {type(side).__name__}", f"write {name} as `key: value` lines")

    try:
        return VariantSpec(name, parse_side(side))
    except ChangeError as exc:
        raise r.fail(f"{name}.{exc.key}", exc.problem, exc.fix) from None


SWEEP_KEYS = ("lengths", "depths", "seeds", "middle", "max_new_tokens", "tasks", "repeats", "repeat_statistic", "cell_timeout_s",
              "loss", "timing", "beyond_trained_positions", "sequential", "require_sensitivity")


def _sweep(r: _Reader, raw: Any) -> SweepSpec:
    s = r.mapping(raw, "sweep", {k: "" for k in SWEEP_KEYS})
    if "lengths" not in s or "depths" not in s:
        raise r.fail("sweep", "needs both lengths and depths", "add sweep.lengths: [1024, ...] and sweep.depths: [0.0, ..., 1.0]")
    lengths = tuple(r.integer(x, "sweep.lengths", low=64, high=limits.MAX_LENGTH_TOKENS)
                    for x in r.listing(s["lengths"], "sweep.lengths", most=limits.MAX_LENGTHS))
    depths = tuple(r.number(x, "sweep.depths", low=0.0, high=1.0) for x in r.listing(s["depths"], "sweep.depths", most=limits.MAX_DEPTHS))
    _distinct_depth_ids(r, depths)
    sequential = _sequential(r, s.get("sequential"))
    if sequential is not None and "seeds" in s:
        raise r.fail("sweep.seeds", "cannot be given with sweep.sequential (its looks run seeds 0, 1, ... up to max_seeds)",
                     "drop sweep.seeds, or drop sweep.sequential to run a fixed set of seeds")
    seeds = tuple(range(sequential.max_seeds)) if sequential is not None else tuple(
        r.integer(x, "sweep.seeds", high=limits.MAX_SEED) for x in r.listing(s.get("seeds", [0]), "sweep.seeds", most=limits.MAX_SEEDS))
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
        sequential=sequential,
        require_sensitivity=r.boolean(s.get("require_sensitivity", False), "sweep.require_sensitivity"),
    )


def _sequential(r: _Reader, raw: Any) -> SequentialSpec | None:
    if raw is None:
        return None
    m = r.mapping(raw, "sweep.sequential", {"batch": "", "max_seeds": "", "alpha": ""})
    for key in ("batch", "max_seeds"):
        if key not in m:
            raise r.fail(f"sweep.sequential.{key}", "is missing", "write sweep.sequential: {batch: 2, max_seeds: 6}")
    batch = r.integer(m["batch"], "sweep.sequential.batch", low=1)
    max_seeds = r.integer(m["max_seeds"], "sweep.sequential.max_seeds", low=1, high=limits.MAX_SEEDS)
    if batch > max_seeds:
        raise r.fail("sweep.sequential.batch", f"{batch} is above max_seeds {max_seeds}", "use a batch of at most max_seeds seeds")
    return SequentialSpec(batch, max_seeds, r.number(m.get("alpha", 0.05), "sweep.sequential.alpha", low=0.001, high=0.5))


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
            "effective_length_ratio": "", "loss_ratio": "", "answer_logprob": ""}
    t = r.mapping(raw if raw is not None else {}, "thresholds", keys)
    mr = r.mapping(t.get("middle_recall", {}), "thresholds.middle_recall", {"min_delta": "", "policy": "", "margin": "", "alpha": ""})
    mem = r.mapping(t.get("memory_ratio", {}), "thresholds.memory_ratio", {"max": "", "source": ""})
    eff = r.mapping(t.get("effective_length_ratio", {}), "thresholds.effective_length_ratio", {"min": "", "recall": ""})
    loss = r.mapping(t.get("loss_ratio", {}), "thresholds.loss_ratio", {"max": ""})
    logprob = r.mapping(t.get("answer_logprob", {}), "thresholds.answer_logprob", {"max_drop": "", "policy": ""})
    if logprob and "max_drop" not in logprob:
        raise r.fail("thresholds.answer_logprob.max_drop", "is missing",
                     "add max_drop: 0.5 (the nats of answer log-probability you accept losing)")
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
        raise r.fail("thresholds.middle_recall.margin", "is required by policy noninferiority",
                     "add margin: 0.05 (the recall loss you accept)")
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
        effective_length_ratio_min=None if eff.get("min") is None else r.number(
            eff["min"], "thresholds.effective_length_ratio.min", low=0.0),
        effective_length_recall=r.number(eff.get("recall", 0.85), "thresholds.effective_length_ratio.recall", low=0.0, high=1.0),
        loss_ratio_max=None if loss.get("max") is None else r.number(loss["max"], "thresholds.loss_ratio.max", low=0.0),
        answer_logprob_max_drop=None if "max_drop" not in logprob else r.number(
            logprob["max_drop"], "thresholds.answer_logprob.max_drop", low=0.0),
        answer_logprob_policy=r.choice(logprob.get("policy", "point"), "thresholds.answer_logprob.policy", get_args(LatencyPolicy)),  # type: ignore[arg-type]
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
    from ..changes.base import ChangeError
    from ..tasks import uses_depth

    for side in variants:
        for change in side.changes:
            try:
                change.check(side, sweep)
            except ChangeError as exc:
                raise r.fail(f"{side.name}.{exc.key}", exc.problem, exc.fix) from None
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
