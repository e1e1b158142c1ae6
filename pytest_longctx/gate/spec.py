"""The gate YAML file: parsed and validated into frozen, typed specs, or a GateError naming file, key and fix."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..changes.model import DEFAULT_MODEL, ModelSpec
from .limits import shown
from .reader import GateError  # also this module's: callers catch `spec.GateError`
from .reader import Reader as _Reader
from .sweep_spec import LossSpec, SequentialSpec, SweepSpec, TimingSpec, parse_sweep
from .thresholds import Thresholds, parse_thresholds

if TYPE_CHECKING:
    from ..changes.base import CachePlan, Change, LoadPlan
    from ..changes.served import ServedEngine
    from ..tasks import TaskSpec

__all__ = [
    "DEFAULT_MODEL", "GateError", "GateSpec", "LossSpec", "ModelSpec", "SequentialSpec", "SweepSpec", "Thresholds", "TimingSpec",
    "VariantSpec", "load_gate", "parse_gate",
]


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
        if sweep.get("load") is not None:
            from .load import LoadSpec

            sweep["load"] = LoadSpec.from_record(sweep["load"])

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
    from ..changes.model import parse_model

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
    sweep, thresholds = parse_sweep(r, top["sweep"]), parse_thresholds(r, top.get("thresholds"))
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
    from .load import check_load

    check_load(r, variants, sweep.load, thresholds)


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
