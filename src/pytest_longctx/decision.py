"""The approval rule: metrics over paired cells, thresholds checked, and a Decision with reasons in plain words."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .gate_spec import GateSpec
from .results import CellResult, Check, Decision, Metrics

EPS = 1e-9  # recall fractions are ratios of small integers; compare them without float noise


def expected_keys(gate: GateSpec) -> list[tuple[str, int, float, int]]:
    s = gate.sweep
    return [(t, n, round(d, 6), seed) for t in s.tasks for n in s.lengths for d in s.depths for seed in s.seeds]


def _mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None


def _p95(values: Sequence[float]) -> float | None:
    if not values:
        return None
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), 95))


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or den is None or den == 0 else num / den


def compute_metrics(gate: GateSpec, cells: Sequence[CellResult]) -> Metrics:
    """Metrics over the cells both variants measured without error; missing and errored cells are counted."""
    names = (gate.baseline.name, gate.candidate.name)
    by_variant: dict[str, dict[tuple[str, int, float, int], CellResult]] = {n: {} for n in names}
    for cell in cells:
        if cell.variant in by_variant:
            by_variant[cell.variant][cell.key] = cell
    keys = expected_keys(gate)
    missing = sum(1 for n in names for k in keys if k not in by_variant[n])
    errored = sum(1 for n in names for c in by_variant[n].values() if c.error is not None)
    paired = [k for k in keys if all(k in by_variant[n] and by_variant[n][k].error is None for n in names)]
    lo, hi = gate.sweep.middle
    middle = [k for k in paired if lo - EPS <= k[2] <= hi + EPS]

    def side(name: str, subset: list[tuple[str, int, float, int]]) -> list[CellResult]:
        return [by_variant[name][k] for k in subset]

    source = gate.thresholds.memory_source
    if source == "auto":
        has_peak = paired and all(c.peak_bytes is not None for n in names for c in side(n, paired))
        source = "peak_bytes" if has_peak else "kv_bytes"
    recall = {n: _mean(float(c.found) for c in side(n, paired)) for n in names}
    middle_recall = {n: _mean(float(c.found) for c in side(n, middle)) for n in names}
    p95 = {n: _p95([c.total_s for c in side(n, paired) if c.total_s is not None]) for n in names}
    memory = {n: _mean(float(getattr(c, source)) for c in side(n, paired) if getattr(c, source) is not None) for n in names}
    base, cand = names
    return Metrics(
        middle_recall={"baseline": middle_recall[base], "candidate": middle_recall[cand]},
        recall={"baseline": recall[base], "candidate": recall[cand]},
        p95_latency_s={"baseline": p95[base], "candidate": p95[cand]},
        p95_latency_ratio=_ratio(p95[cand], p95[base]),
        memory_bytes={"baseline": memory[base], "candidate": memory[cand]},
        memory_ratio=_ratio(memory[cand], memory[base]),
        memory_source=source,  # type: ignore[arg-type]
        paired_cells=len(paired),
        middle_cells=len(middle),
        expected_cells=len(keys),
        errored_cells=errored,
        missing_cells=missing,
    )


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def decide(gate: GateSpec, metrics: Metrics) -> Decision:
    """Apply the approval rule. Missing or errored cells make the verdict `incomplete`: a gate fails closed."""
    t = gate.thresholds
    mr = metrics.middle_recall
    delta = None if mr["baseline"] is None or mr["candidate"] is None else mr["candidate"] - mr["baseline"]
    checks = (
        Check(
            "middle_recall_delta", delta, t.middle_recall_min_delta, ">=",
            delta is not None and delta >= t.middle_recall_min_delta - EPS,
            f"middle-depth recall {_fmt(mr['candidate'], 2)} (candidate) vs {_fmt(mr['baseline'], 2)} (baseline) "
            f"over {metrics.middle_cells} paired cells: delta {_fmt(delta, 2)}, required >= {t.middle_recall_min_delta:.2f}",
        ),
        Check(
            "p95_latency_ratio", metrics.p95_latency_ratio, t.p95_latency_ratio_max, "<=",
            metrics.p95_latency_ratio is not None and metrics.p95_latency_ratio <= t.p95_latency_ratio_max,
            f"p95 end-to-end latency {_fmt(metrics.p95_latency_s['candidate'])} s vs {_fmt(metrics.p95_latency_s['baseline'])} s: "
            f"ratio {_fmt(metrics.p95_latency_ratio)}, allowed <= {t.p95_latency_ratio_max:.2f}",
        ),
        Check(
            "memory_ratio", metrics.memory_ratio, t.memory_ratio_max, "<=",
            metrics.memory_ratio is not None and metrics.memory_ratio <= t.memory_ratio_max,
            f"memory ({metrics.memory_source}) {_fmt(_mib(metrics.memory_bytes['candidate']), 1)} MiB vs "
            f"{_fmt(_mib(metrics.memory_bytes['baseline']), 1)} MiB: ratio {_fmt(metrics.memory_ratio)}, "
            f"allowed <= {t.memory_ratio_max:.2f}",
        ),
    )
    reasons = [("PASS " if c.passed else "FAIL ") + c.detail for c in checks]
    gaps = []
    if metrics.missing_cells:
        gaps.append(f"{metrics.missing_cells} of {2 * metrics.expected_cells} cells were not run (deselected, interrupted or skipped)")
    if metrics.errored_cells:
        gaps.append(f"{metrics.errored_cells} cells errored")
    if gaps:
        return Decision("incomplete", tuple(["cannot approve: " + "; ".join(gaps)] + reasons), checks)
    verdict = "approve" if all(c.passed for c in checks) else "reject"
    return Decision(verdict, tuple(reasons), checks)


def _mib(value: float | None) -> float | None:
    return None if value is None else value / 2**20


def evaluate(gate: GateSpec, cells: Sequence[CellResult]) -> tuple[Metrics, Decision]:
    metrics = compute_metrics(gate, cells)
    return metrics, decide(gate, metrics)
