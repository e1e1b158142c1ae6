"""The load sweep's part of the approval rule: goodput and throughput ratios over its levels, checked, folded into a Decision.

Each ratio is candidate/baseline at one concurrency level; the gate judges the lowest over the levels (the level
where the candidate fares worst), so a candidate that holds at low load and falls behind at high load, or the
reverse, is caught either way. Every level's ratios are kept in the metrics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .load import LoadLevel, applies
from .results import Check, Decision, Metrics, Verdict
from .spec import GateSpec

EPS = 1e-9
# How bad each verdict is: the merged verdict is the worse of the cells' and the load sweep's.
_RANK: dict[Verdict, int] = {"approve": 0, "inconclusive": 1, "reject": 2, "incomplete": 3, "invalid": 4}
_FIGURES = {"goodput_ratio": ("goodput_rps", "goodput", "req/s"), "throughput_ratio": ("throughput_tok_s", "throughput", "tokens/s")}


def level_ratios(gate: GateSpec, levels: Sequence[LoadLevel]) -> dict[str, dict[str, float | None]]:
    """Per concurrency level (JSON-ready string keys): candidate/baseline goodput and throughput; None where a side is
    missing or the baseline's figure is 0 (a ratio to nothing says nothing)."""
    assert gate.sweep.load is not None
    found = {(level.variant, level.concurrency): level for level in levels}
    table: dict[str, dict[str, float | None]] = {}
    for c in gate.sweep.load.concurrency:
        base, cand = found.get((gate.baseline.name, c)), found.get((gate.candidate.name, c))
        row: dict[str, float | None] = {}
        for name, (attr, _, _) in _FIGURES.items():
            b = None if base is None else getattr(base, attr)
            v = None if cand is None else getattr(cand, attr)
            row[name] = None if b is None or v is None or b <= 0 else v / b
        table[str(c)] = row
    return table


def apply_load(gate: GateSpec, metrics: Metrics, decision: Decision, levels: Sequence[LoadLevel]) -> tuple[Metrics, Decision]:
    """Add the load sweep's metrics and checks to a decided run. Errored or missing levels make it incomplete; a
    failed ratio rejects; a sweep that does not apply (an in-process side, a captured baseline) is said, not judged."""
    spec = gate.sweep.load
    assert spec is not None
    note = applies(gate.variants)
    if note is None and gate.captured_baseline is not None:
        note = "sweep.load: not compared: the baseline was captured in an earlier run, and load figures do not transfer between runs"
    if note is not None:
        check = Check("load_sweep", None, 0.0, ">=", True, note, policy="skipped")
        return (dataclasses.replace(metrics, load_note=note),
                dataclasses.replace(decision, reasons=(*decision.reasons, "NOTE " + note), checks=(*decision.checks, check)))
    table = level_ratios(gate, levels)
    found = {(level.variant, level.concurrency): level for level in levels}
    gaps = []
    for c in spec.concurrency:
        for side in gate.variants:
            level = found.get((side.name, c))
            if level is None:
                gaps.append(f"the load sweep did not run at concurrency {c} on {side.name}")
            elif level.errors:
                first = f" (first: {level.error_samples[0]})" if level.error_samples else ""
                gaps.append(f"{level.errors} of {level.requests} load requests errored at concurrency {c} on {side.name}{first}")
    if not gaps and gate.thresholds.goodput_ratio_min is not None and all(r["goodput_ratio"] is None for r in table.values()):
        gaps.append(f"no baseline request met both SLOs (TTFT <= {spec.slo.ttft_s:g} s, TPOT <= {spec.slo.tpot_s:g} s) at any "
                    "level, so goodput has nothing to compare; loosen sweep.load.slo")
    ratios = {name: _lowest(table, name) for name in _FIGURES}
    checks = [_check(gate, name, ratios[name], found) for name in _FIGURES]
    metrics = dataclasses.replace(metrics, goodput_ratio=ratios["goodput_ratio"][0], throughput_ratio=ratios["throughput_ratio"][0],
                                  load_ratios=table)
    judged = [c for c in checks if c.policy != "info"]
    own: Verdict = "incomplete" if gaps else "reject" if any(not c.passed for c in judged) else "approve"
    verdict = max(decision.verdict, own, key=lambda v: _RANK[v])
    lines = [("PASS " if c.passed else "FAIL ") + c.detail for c in judged] + ["NOTE " + c.detail for c in checks if c.policy == "info"]
    head = ["cannot approve: " + "; ".join(gaps)] if gaps else []
    return metrics, Decision(verdict, (*head, *decision.reasons, *lines), (*decision.checks, *checks))


def _lowest(table: dict[str, dict[str, float | None]], name: str) -> tuple[float | None, int | None]:
    defined = [(ratio, int(c)) for c, row in table.items() if (ratio := row[name]) is not None]
    if not defined:
        return None, None
    return min(defined)


def _check(gate: GateSpec, name: str, lowest: tuple[float | None, int | None], found: dict[tuple[str, int], LoadLevel]) -> Check:
    spec = gate.sweep.load
    assert spec is not None
    ratio, level = lowest
    attr, label, unit = _FIGURES[name]
    bound = getattr(gate.thresholds, f"{name}_min")
    slo = f" within TTFT <= {spec.slo.ttft_s:g} s and TPOT <= {spec.slo.tpot_s:g} s" if name == "goodput_ratio" else ""
    if ratio is None or level is None:
        head = f"load {label}{slo}: no level where both sides measured it and the baseline's is above 0"
    else:
        cand, base = (getattr(found[(side.name, level)], attr) for side in (gate.candidate, gate.baseline))
        head = (f"load {label}{slo} at concurrency {level} (the lowest ratio over levels {list(spec.concurrency)}): "
                f"{cand:.3g} vs {base:.3g} {unit}, ratio {ratio:.3f}")
    if bound is None:
        return Check(name, ratio, 0.0, ">=", True, f"{head}; not part of the rule (set thresholds.{name}.min to judge it)", policy="info")
    passed = ratio is not None and ratio >= bound - EPS
    return Check(name, ratio, bound, ">=", passed, f"{head}; required >= {bound:.2f}")
