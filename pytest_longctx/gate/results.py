"""Typed records of what a gate measured: one per cell, and the whole run, with their JSON form."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .load import LoadLevel

# 2: cells gained kv_source, retrieval, score, timed samples and reused_tokens; metrics gained prefill_tokens,
# loss curves, recall by task and length, failures and kv_source; reading became strict about keys.
# 3: the load sweep: top-level load_levels; metrics gained goodput_ratio, throughput_ratio, load_ratios, load_note.
# 4: cells gained cold_check and the engine's KV cache (kv_capacity_tokens, kv_capacity_bytes, kv_slots); metrics
# gained cold_check, kv_engine, kv_capacity_tokens and kv_capacity_ratio.
# Older records still read: they ran no load sweep and their engines' figures were not read, so the keys added
# since take their empty values.
SCHEMA_VERSION = 4
READABLE_VERSIONS = (2, 3, 4)
# What each version added, by record kind: a record of an older version may lack these keys.
ADDED_IN: dict[int, dict[str, tuple[str, ...]]] = {
    3: {"metrics": ("goodput_ratio", "throughput_ratio", "load_ratios", "load_note")},  # and load_levels at the top level
    4: {"cell": ("cold_check", "kv_capacity_tokens", "kv_capacity_bytes", "kv_slots"),
        "metrics": ("cold_check", "kv_engine", "kv_capacity_tokens", "kv_capacity_ratio")},
}

Verdict = Literal["approve", "reject", "incomplete", "invalid", "inconclusive"]
Failure = Literal["missing", "wrong_value", "partial", "truncated", "refusal/other", "not_retrieved", "cut_from_history", "error"]


class ResultsError(ValueError):
    """A results record with keys this version does not write, or without keys it does; names which and where."""


REWRITE = "re-run the gate with this pytest-longctx to write the file again"


def require_keys(data: Any, expected: Iterable[str], where: str, *, fix: str = REWRITE) -> None:
    """Refuse a record whose keys differ from `expected`: an unknown key is a typo or another version's field,
    and a missing one would be silently filled with a default that the run never measured."""
    if not isinstance(data, dict):
        raise ResultsError(f"{where}: expected an object, got {type(data).__name__}")
    expected = tuple(expected)
    unknown = sorted(k for k in data if k not in expected)
    missing = [k for k in expected if k not in data]
    if unknown or missing:
        parts = ([f"unknown keys {', '.join(unknown)}"] if unknown else []) + ([f"missing keys {', '.join(missing)}"] if missing else [])
        raise ResultsError(f"{where}: {'; '.join(parts)}. Fix: {fix}")


def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


class _CellRecord:
    """A record filed under one cell of the sweep; `key` pairs one side's record with the other side's."""

    task: str
    length: int
    depth: float
    seed: int

    @property
    def key(self) -> tuple[str, int, float, int]:
        return (self.task, self.length, round(self.depth, 6), self.seed)


def _keys_of(cls: type, kind: str, version: int, data: Any) -> tuple[str, ...]:
    """The keys a `kind` record of `version` holds: today's fields less those added after it (a record of an old
    version carrying a later key is another version's, refused like any unknown key)."""
    later = {key for added, kinds in ADDED_IN.items() if added > version for key in kinds.get(kind, ())}
    return tuple(name for name in _field_names(cls) if name not in later)


def record_version(kind: str, data: Any) -> int:
    """The newest readable version whose `kind` keys the record holds: for records filed without a schema version
    (a captured baseline's cells), so one captured before a key was added still reads, and then strictly."""
    present = data if isinstance(data, dict) else {}
    for version in reversed(READABLE_VERSIONS):
        if all(key in present for added, kinds in ADDED_IN.items() if added <= version for key in kinds.get(kind, ())):
            return version
    return READABLE_VERSIONS[0]


@dataclass(frozen=True)
class CellResult(_CellRecord):
    """One cell of one variant: a prompt of `length` tokens with the needle at `depth`.

    A miss (`found=False`) is data; `error` is set only when the cell could not be measured,
    and such a cell never counts towards an approval.
    """

    variant: str
    task: str
    length: int
    tokens: int
    depth: float
    seed: int
    found: bool
    answer: str
    expected: str
    prefill_s: float | None
    decode_s_per_token: float | None
    total_s: float | None
    new_tokens: int
    kv_bytes: int | None
    kv_bytes_analytic: int | None
    kv_tokens: int | None
    peak_bytes: int | None
    prompt_sha256: str
    needle_start: int | None = None
    error: str | None = None
    failure: Failure | None = None
    excerpt: str = ""
    repeats: int = 1
    score: float | None = None  # the task's credit for the answer (a share of the values under part scoring)
    # Every timed, full run of the prompt (one per timing pass); prefill_s etc. are their repeat statistic.
    prefill_samples: tuple[float, ...] = ()
    decode_samples: tuple[float, ...] = ()
    total_samples: tuple[float, ...] = ()
    reused_tokens: int = 0  # prompt tokens whose K/V the recall run took from an earlier cell (never timed)
    retrieval: dict[str, Any] | None = None  # what a retrieval side selected (chunks, prefill tokens, seconds)
    # Where kv_bytes came from: "measured" (the cache tensors), "engine" (a server's /metrics), "analytic" (the
    # formula, for a server that reports no cache), "unknown".
    kv_source: str = "measured"
    # Sum over the task's expected values of log p(value tokens | this side's prompt), teacher-forced on the very
    # cache, window and RoPE the side ran with; None where the backend does not measure it (served engines).
    answer_logprob: float | None = None
    # Whether the timed runs started with nothing of the prompt in a served engine's prefix cache: "engine" (its
    # counters said so for every one), "assumed" (the side set cold_timing: assume), "unverified" (the engine has
    # no counter), "n/a" (untimed, or in-process, where timed runs never start from a cache).
    cold_check: str = "n/a"
    # The KV cache the served engine allocated, in its own figures: token slots, bytes (None where it does not
    # say), and sequences it runs at once.
    kv_capacity_tokens: int | None = None
    kv_capacity_bytes: int | None = None
    kv_slots: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def stable_dict(self) -> dict[str, Any]:
        """to_dict without the keys added since version 2 that hold their empty values: what a digest of a cell
        covers, so that a baseline captured before they existed still matches its digest."""
        empty = {f.name: f.default for f in dataclasses.fields(self)}
        added = {key for kinds in ADDED_IN.values() for key in kinds.get("cell", ())}
        return {k: v for k, v in self.to_dict().items() if k not in added or v != empty[k]}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "cell", version: int = SCHEMA_VERSION) -> CellResult:
        """`version`: the results schema the record was written with (keys added since may be absent)."""
        require_keys(data, _keys_of(cls, "cell", version, data), where)
        values = dict(data)
        for key in ("prefill_samples", "decode_samples", "total_samples"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class TimingSample(_CellRecord):
    """One timed, full run of one cell's prompt by one variant, from a timing pass."""

    variant: str
    task: str
    length: int
    depth: float
    seed: int
    prefill_s: float | None
    decode_s_per_token: float | None
    total_s: float | None
    answer: str
    error: str | None = None
    cold_check: str = "n/a"  # as CellResult.cold_check, for this one run

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimingSample:
        return cls(**data)


@dataclass(frozen=True)
class Check:
    """One threshold of the approval rule, evaluated."""

    name: str
    value: float | None
    threshold: float
    comparison: Literal[">=", "<="]
    passed: bool
    detail: str
    ci_low: float | None = None
    ci_high: float | None = None
    policy: str = "strict"
    # Sequential gates only: what this look's interval says (approve, reject, or undecided: look again).
    state: str | None = None


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reasons: tuple[str, ...]
    checks: tuple[Check, ...] = ()

    @property
    def approved(self) -> bool:
        return self.verdict == "approve"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        require_keys(data, ("verdict", "reasons", "checks"), "decision")
        for i, check in enumerate(data["checks"]):
            require_keys(check, _field_names(Check), f"decision.checks[{i}]")
        return cls(
            verdict=data["verdict"],
            reasons=tuple(data["reasons"]),
            checks=tuple(Check(**c) for c in data["checks"]),
        )


@dataclass(frozen=True)
class Metrics:
    """The numbers the approval rule reads, each computed over paired, error-free cells."""

    middle_recall: dict[str, float | None]
    recall: dict[str, float | None]
    p95_latency_s: dict[str, float | None]
    p95_latency_ratio: float | None
    memory_bytes: dict[str, float | None]
    memory_ratio: float | None
    memory_source: Literal["kv_bytes", "peak_bytes"]
    paired_cells: int
    middle_cells: int
    expected_cells: int
    errored_cells: int
    missing_cells: int
    # Paired statistics (issue: a decision you can trust)
    middle_recall_delta: float | None = None
    middle_recall_delta_ci: tuple[float, float] | None = None
    discordant: dict[str, int] = field(default_factory=dict)  # baseline_only / candidate_only found, middle band
    mcnemar_p: float | None = None
    p95_latency_ratio_ci: tuple[float, float] | None = None
    p95_prefill_s: dict[str, float | None] = field(default_factory=dict)
    p95_prefill_ratio: float | None = None
    p95_prefill_ratio_ci: tuple[float, float] | None = None
    p95_decode_s: dict[str, float | None] = field(default_factory=dict)
    p95_decode_ratio: float | None = None
    p95_decode_ratio_ci: tuple[float, float] | None = None
    latency_compared: bool = True  # False when the baseline was captured earlier: its timings are not comparable
    prompt_mismatches: int = 0
    fingerprint_mismatches: tuple[str, ...] = ()
    # Per task family and length, and the effective context length (largest length where recall holds)
    recall_by_task: dict[str, dict[str, float | None]] = field(default_factory=dict)
    recall_by_length: dict[str, dict[str, float | None]] = field(default_factory=dict)
    effective_length: dict[str, int | None] = field(default_factory=dict)
    effective_length_ratio: float | None = None
    failures: dict[str, dict[str, int]] = field(default_factory=dict)  # miss categories per side
    prefill_tokens: dict[str, float | None] = field(default_factory=dict)  # mean prompt tokens per query, per side
    loss_curves: dict[str, dict[str, Any]] = field(default_factory=dict)  # per side: edges, losses, counts, tokens
    loss_ratio: float | None = None  # worst bucket's candidate/baseline mean next-token loss
    loss_worst_bucket: int | None = None
    kv_source: dict[str, str] = field(default_factory=dict)  # per side: where kv_bytes came from (CellResult.kv_source)
    # Answer likelihood: per side the mean teacher-forced log p of the expected answer (nats), over the cells both
    # sides measured; the paired mean difference, its bootstrap interval and the Wilcoxon signed-rank p.
    answer_logprob: dict[str, float | None] = field(default_factory=dict)
    answer_logprob_delta: float | None = None
    answer_logprob_delta_ci: tuple[float, float] | None = None
    answer_logprob_wilcoxon_p: float | None = None
    answer_logprob_cells: int = 0
    # The smallest middle-band recall drop the recall check rejects with 80 % power (statistics.min_detectable_drop).
    middle_recall_detectable_drop: float | None = None
    # Evidence about the sweep itself: where a baseline at a ceiling or floor hides recall changes (and whether that
    # is everywhere), misses the gate's own settings caused, and a candidate change that changed nothing.
    sensitivity: tuple[str, ...] = ()
    insensitive: bool = False
    configuration: tuple[str, ...] = ()
    noop: str | None = None
    # Sequential gates: the look the verdict was reached at, of how many planned, the seeds it read, and the
    # confidence of each look's intervals (the error rate split over the looks).
    looks: int | None = None
    planned_looks: int | None = None
    seeds_used: tuple[int, ...] = ()
    stopped_early: bool | None = None
    look_confidence: float | None = None
    # The load sweep (gate/load_decision.py): candidate/baseline goodput and throughput at the level where each
    # is lowest, every level's ratios (keyed by concurrency), and why the sweep did not apply, if it did not.
    goodput_ratio: float | None = None
    throughput_ratio: float | None = None
    load_ratios: dict[str, dict[str, float | None]] = field(default_factory=dict)
    load_note: str | None = None
    # Per side: how its timed cells stood on coldness (CellResult.cold_check values, joined with "/").
    cold_check: dict[str, str] = field(default_factory=dict)
    # Per side, the KV cache its engine allocated (capacity_tokens, bytes, bytes_per_token, slots, sequences of the
    # longest length that fit at once, source); absent for a side whose engine does not say.
    kv_engine: dict[str, dict[str, Any]] = field(default_factory=dict)
    kv_capacity_tokens: dict[str, float | None] = field(default_factory=dict)
    # Candidate over baseline KV tokens held per byte of cache (tokens at equal memory): from the engines' own
    # figures where both report bytes, else from the cells' kv_bytes per token.
    kv_capacity_ratio: float | None = None

    @property
    def memory_label(self) -> str:
        """What the memory figures are: peak allocations, or KV bytes, saying which sides' are only the formula's."""
        if self.memory_source != "kv_bytes":
            return self.memory_source
        estimated = [label for label, src in self.kv_source.items() if "analytic" in src.split("/")]
        if not estimated and self.kv_engine and all(kv.get("bytes") for kv in self.kv_engine.values()) and len(self.kv_engine) == 2:
            return "kv_bytes; engine-reported cache bytes per token"
        return "kv_bytes" if not estimated else f"kv_bytes; {' and '.join(estimated)}: analytic estimate, the engine reports none"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], version: int = SCHEMA_VERSION) -> Metrics:
        require_keys(data, _keys_of(cls, "metrics", version, data), "metrics")
        values = dict(data)
        for key in ("middle_recall_delta_ci", "p95_latency_ratio_ci", "p95_prefill_ratio_ci", "p95_decode_ratio_ci",
                    "fingerprint_mismatches", "answer_logprob_delta_ci", "seeds_used", "sensitivity", "configuration"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


def load_level_from_dict(data: Any, where: str = "load level") -> LoadLevel:
    require_keys(data, _field_names(LoadLevel), where)
    return LoadLevel(**{**data, "error_samples": tuple(data["error_samples"])})



@dataclass(frozen=True)
class GateResults:
    """Everything one gate run produced; the report and summaries are pure functions of this."""

    gate: dict[str, Any]
    decision: Decision
    metrics: Metrics
    cells: tuple[CellResult, ...]
    environment: dict[str, Any] = field(default_factory=dict)
    wall_s: float | None = None
    schema_version: int = SCHEMA_VERSION
    load_levels: tuple[LoadLevel, ...] = ()  # the load sweep, per side and concurrency level

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "gate": self.gate,
            "decision": self.decision.to_dict(),
            "metrics": self.metrics.to_dict(),
            "cells": [c.to_dict() for c in self.cells],
            "environment": self.environment,
            "wall_s": self.wall_s,
            "load_levels": [level.to_dict() for level in self.load_levels],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GateResults:
        if not isinstance(data, dict):
            raise ResultsError(f"expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if isinstance(version, int) and not isinstance(version, bool) and version < READABLE_VERSIONS[0]:
            raise ResultsError(
                f"results schema_version {version} is older than {READABLE_VERSIONS[0]}, the oldest version this pytest-longctx reads "
                "(fields were added since). Fix: re-run the gate to write the file again"
            )
        if not isinstance(version, int) or isinstance(version, bool) or version not in READABLE_VERSIONS:
            raise ResultsError(
                f"results schema_version {version!r} is not supported (this pytest-longctx reads version {SCHEMA_VERSION})"
            )
        keys = ("schema_version", "gate", "decision", "metrics", "cells", "environment", "wall_s")
        require_keys(data, keys + ("load_levels",) if version >= 3 else keys, "top level")
        return cls(
            gate=data["gate"],
            decision=Decision.from_dict(data["decision"]),
            metrics=Metrics.from_dict(data["metrics"], version),
            cells=tuple(CellResult.from_dict(c, f"cells[{i}]", version) for i, c in enumerate(data["cells"])),
            environment=data["environment"],
            wall_s=data["wall_s"],
            load_levels=tuple(load_level_from_dict(v, f"load_levels[{i}]") for i, v in enumerate(data.get("load_levels", ()))),
        )


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        # mkstemp creates 0600; the file a user gets should have the mode any other file they create gets.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask; reading it means setting it, so it is set straight back."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_results(results: GateResults, path: Path) -> None:
    write_atomic(path, json.dumps(results.to_dict(), indent=2, sort_keys=False) + "\n")


def load_results(path: Path) -> GateResults:
    return GateResults.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
