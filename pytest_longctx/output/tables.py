"""The report's tables: memory, cells and their timed runs, failures, recall by length, the run and its environment."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..gate.results import CellResult, Failure, GateResults
from .heatmaps import task_order, variant_names
from .settings import NA, fmt_value
from .summary import cell_counts, effective_length_recall, fmt_bytes, fmt_millis, fmt_number, fmt_seconds

# ----------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class MemoryRow:
    length: int
    variant: str
    kv: str
    kv_analytic: str
    measured_over_analytic: str
    peak: str
    cells: int


def _mean(values: Iterable[int | float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def memory_rows(results: GateResults) -> tuple[MemoryRow, ...]:
    """Per length and variant: mean measured KV bytes, the analytic figure, their ratio, and mean peak bytes."""
    order = variant_order(results)
    groups: dict[tuple[int, str], list[CellResult]] = defaultdict(list)
    for c in results.cells:
        groups[(c.length, c.variant)].append(c)
    rows = []
    for (length, variant), group in sorted(groups.items(), key=lambda kv: (kv[0][0], order(kv[0][1]))):
        kv, analytic = _mean(c.kv_bytes for c in group), _mean(c.kv_bytes_analytic for c in group)
        rows.append(MemoryRow(
            length=length, variant=variant, kv=fmt_bytes(kv), kv_analytic=fmt_bytes(analytic),
            measured_over_analytic=fmt_number(None if kv is None or not analytic else kv / analytic),
            peak=fmt_bytes(_mean(c.peak_bytes for c in group)), cells=len(group),
        ))
    return tuple(rows)


@dataclass(frozen=True)
class CellRow:
    variant: str
    task: str
    length: int
    tokens: int
    depth: str
    seed: int
    needle_at: str
    found: str
    failure: str
    expected: str
    answer: str
    excerpt: tuple[str, str, str]  # text before the expected value, the value, text after it
    prefill_s: str
    decode_ms: str
    total_s: str
    kv_bytes: str
    error: str
    status: Literal["found", "missed", "error"]
    timed_runs: tuple[str, ...] = ()  # "3 timed runs: 1.210 / 1.190 / 1.250 s, min used", then prefill and decode
    reused: str = ""  # set when the recall run took part of its prompt's K/V from a cache (so it was not timed)


def variant_order(results: GateResults) -> Callable[[str], tuple[int, str]]:
    known = variant_names(results)
    return lambda v: (known.index(v), v) if v in known else (len(known), v)


def _split_on(text: str, value: str) -> tuple[str, str, str]:
    """`text` around the first `value` in it, so the template can mark the needle's value; all three stay escaped."""
    at = text.find(value) if value else -1
    return (text, "", "") if at < 0 else (text[:at], value, text[at + len(value):])


def _samples(values: Sequence[float], fmt: Callable[[float | None], str]) -> str:
    return " / ".join(fmt(v) for v in values)


def timed_runs(cell: CellResult, statistic: str) -> tuple[str, ...]:
    """The cell's timed runs in words: end-to-end seconds of each, which statistic the cell's timings are, and
    the prefill and decode of each run; () for a cell that records no samples (older results files)."""
    total = tuple(getattr(cell, "total_samples", ()) or ())
    if not total:
        return ()
    used = f", {statistic} used" if len(total) > 1 else ""
    lines = [f"{len(total)} timed run{'s' if len(total) > 1 else ''}: {_samples(total, fmt_seconds)} s{used}"]
    if cell.prefill_samples:
        lines.append(f"prefill {_samples(cell.prefill_samples, fmt_seconds)} s")
    if cell.decode_samples:
        lines.append(f"decode {_samples(cell.decode_samples, fmt_millis)} ms/token")
    return tuple(lines)


def _repeat_statistic(results: GateResults) -> str:
    return str(results.gate.get("sweep", {}).get("repeat_statistic", "min"))


def repeat_note(results: GateResults) -> str:
    """How a cell's timings came from its timed runs, when cells have more than one; "" otherwise."""
    runs = max((len(getattr(c, "total_samples", ()) or ()) for c in results.cells), default=0)
    if runs < 2:
        return ""
    return (f"A cell's timing is the {_repeat_statistic(results)} of its timed runs (up to {runs}, spread over separate "
            f"passes); the cells table lists every run.")


def _failure_text(c: CellResult) -> str:
    failure = str(getattr(c, "failure", None) or "")
    score = getattr(c, "score", None)
    if failure and score is not None and 0 < score < 1:
        return f"{failure} ({score:.2f} credit)"
    return failure


def cell_rows(results: GateResults) -> tuple[CellRow, ...]:
    """Every cell, baseline first. `answer`, `excerpt` and `error` are untrusted text, left for autoescape."""
    order = variant_order(results)
    tasks = task_order(results)
    statistic = _repeat_statistic(results)
    cells = sorted(results.cells, key=lambda c: (order(c.variant), tasks.index(c.task), c.length, c.depth, c.seed))
    return tuple(
        CellRow(
            variant=c.variant,
            task=c.task,
            length=c.length,
            tokens=c.tokens,
            depth=f"{c.depth:.2f}",
            seed=c.seed,
            needle_at=NA if c.needle_start is None else f"token {c.needle_start}",
            found="—" if c.error is not None else ("✓" if c.found else "✗"),
            failure=_failure_text(c),
            expected=c.expected,
            answer=c.answer,
            excerpt=_split_on(str(getattr(c, "excerpt", "") or ""), c.expected),
            prefill_s=fmt_seconds(c.prefill_s),
            decode_ms=fmt_millis(c.decode_s_per_token),
            total_s=fmt_seconds(c.total_s),
            kv_bytes=fmt_bytes(c.kv_bytes),
            error=c.error or "",
            status="error" if c.error is not None else ("found" if c.found else "missed"),
            timed_runs=timed_runs(c, statistic),
            reused=f"recall run reused {c.reused_tokens} cached prompt tokens: not timed" if getattr(c, "reused_tokens", 0) else "",
        )
        for c in cells
    )


@dataclass(frozen=True)
class FailureRow:
    """Why cells missed: one category, counted per side over every recorded cell, and where (per task)."""

    category: str
    baseline: int
    candidate: int
    by_task: str  # "niah_multikey 1/3 · common_words 0/1": baseline/candidate cells per task


def failure_rows(results: GateResults) -> tuple[FailureRow, ...]:
    """One row per miss category any cell records, in the order `results.Failure` lists them."""
    baseline, candidate = variant_names(results)
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for c in results.cells:
        failure = getattr(c, "failure", None)
        if failure and c.variant in (baseline, candidate):
            counts[str(failure)][c.task][0 if c.variant == baseline else 1] += 1
    known = list(get_args(Failure))
    order = sorted(counts, key=lambda k: (known.index(k) if k in known else len(known), k))
    tasks = task_order(results)

    def row(category: str) -> FailureRow:
        per_task = counts[category]
        where = " · ".join(f"{t} {per_task[t][0]}/{per_task[t][1]}" for t in tasks if t in per_task)
        return FailureRow(category, sum(b for b, _ in per_task.values()), sum(c for _, c in per_task.values()),
                          where if len(tasks) > 1 else "")

    return tuple(row(category) for category in order)


@dataclass(frozen=True)
class LengthRow:
    """Recall at one length for both sides; `*_held` while every length up to this one holds the recall bar."""

    length: int
    baseline: str
    candidate: str
    delta: str
    baseline_held: bool
    candidate_held: bool
    baseline_effective: bool
    candidate_effective: bool


def length_rows(results: GateResults) -> tuple[LengthRow, ...]:
    """Recall by length over paired cells (`Metrics.recall_by_length`), the effective length marked per side."""
    table = results.metrics.recall_by_length
    base, cand = table.get("baseline", {}), table.get("candidate", {})
    effective = results.metrics.effective_length
    lengths = sorted({int(n) for n in base} | {int(n) for n in cand})

    def held(side: str, length: int) -> bool:
        limit = effective.get(side)
        return limit is not None and length <= limit

    rows = []
    for n in lengths:
        b, c = base.get(str(n)), cand.get(str(n))
        rows.append(LengthRow(
            length=n, baseline=fmt_number(b), candidate=fmt_number(c),
            delta=fmt_number(None if b is None or c is None else c - b, signed=True),
            baseline_held=held("baseline", n), candidate_held=held("candidate", n),
            baseline_effective=effective.get("baseline") == n, candidate_effective=effective.get("candidate") == n,
        ))
    return tuple(rows)


def effective_length_note(results: GateResults) -> str:
    """One sentence: each side's effective context length and their ratio; "" when the run did not record one."""
    m = results.metrics
    if not m.effective_length:
        return ""
    bar = effective_length_recall(results)

    def side(name: str) -> str:
        value = m.effective_length.get(name)
        if value is not None:
            return f"{value} tokens"
        table = {int(n): r for n, r in m.recall_by_length.get(name, {}).items() if r is not None}
        shortest = min(table, default=None)
        return f"none (recall {table[shortest]:.2f} already at {shortest})" if shortest is not None and table[shortest] < bar else NA

    ratio = "" if m.effective_length_ratio is None else f" (ratio {fmt_number(m.effective_length_ratio)})"
    return (f"Effective context length, the longest length up to which recall stays at or above {bar:.2f}: "
            f"baseline {side('baseline')}, candidate {side('candidate')}{ratio}.")


def run_rows(results: GateResults) -> tuple[tuple[str, str], ...]:
    """Gate identity and run totals, as key/value pairs."""
    return (
        ("gate file", fmt_value(results.gate.get("path")) if results.gate.get("path") else NA),
        ("gate sha256", str(results.gate.get("sha256") or NA)),
        ("wall time (s)", fmt_seconds(results.wall_s, digits=1)),
        ("cells", cell_counts(results)),
        ("schema version", str(results.schema_version)),
    )


def environment_rows(environment: Mapping[str, Any], prefix: str = "") -> tuple[tuple[str, str], ...]:
    """Every recorded environment key, nested mappings flattened to `outer.inner`."""
    rows: list[tuple[str, str]] = []
    for key, value in environment.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows.extend(environment_rows(value, f"{name}."))
        else:
            rows.append((name, fmt_value(value)))
    return tuple(rows)
