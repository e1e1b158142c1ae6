"""Sequential gates: the sweep in looks of a few seeds, each look's intervals at an error rate split over the
looks, and a verdict as soon as every check is decided (docs/statistics.md states the method)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .results import CellResult, Check, Decision, Metrics
from .spec import GateSpec
from .statistics import more_seeds_to_decide

EPS = 1e-9
# Checks read by their interval at every look; the others are deterministic (memory) or have no interval
# (effective length, loss) and are decided by their value at the first look that has it.
INTERVAL_CHECKS = ("middle_recall_delta", "answer_logprob_delta", "p95_latency_ratio", "p95_prefill_ratio", "p95_decode_ratio")
UNJUDGED = ("skipped", "info", "not measured")


def interval_checks(gate: GateSpec) -> int:
    """How many checks of this gate read an interval: the false-reject budget is split among them too."""
    t = gate.thresholds
    latency = 0 if gate.captured_baseline is not None else 1 + (t.p95_prefill_ratio_max is not None) + (t.p95_decode_ratio_max is not None)
    return 1 + latency + (t.answer_logprob_max_drop is not None)


def look_confidence(gate: GateSpec) -> float:
    """Two-sided confidence of every interval at every look.

    A check rejects only when its interval lies wholly on the wrong side of its threshold: a one-sided error of
    (1 - confidence) / 2. Bonferroni: alpha / (looks x interval checks) each, so over every look and every check
    an unchanged candidate is rejected with probability at most alpha.
    """
    spec = gate.sweep.sequential
    assert spec is not None
    return 1 - 2 * spec.alpha / (spec.planned_looks * interval_checks(gate))


def judge(check: Check) -> Check:
    """One look's reading of a check: reject when its interval excludes the acceptable region, approve when it
    lies inside, undecided otherwise (or with too few cells for an interval)."""
    if check.policy in UNJUDGED or check.name not in INTERVAL_CHECKS:
        return dataclasses.replace(check, state="approve" if check.passed else "reject")
    lo, hi, t = check.ci_low, check.ci_high, check.threshold
    if lo is None or hi is None:
        state = "undecided"
    elif check.comparison == ">=":
        state = "reject" if hi < t - EPS else "approve" if lo >= t - EPS else "undecided"
    else:
        state = "reject" if lo > t + EPS else "approve" if hi <= t + EPS else "undecided"
    words = {"approve": "the whole interval is acceptable", "reject": "the whole interval is past the threshold",
             "undecided": "the interval still holds the threshold"}
    return dataclasses.replace(check, passed=state == "approve", state=state, detail=f"{check.detail}; this look: {words[state]}")


def _seeds(seeds: Sequence[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"


def _open_reason(check: Check, seeds: int) -> str:
    """What an undecided check saw and roughly how many more seeds would decide it (interval width ~ 1/sqrt(n))."""
    if check.ci_low is None or check.ci_high is None or check.value is None:
        return f"{check.name}: too few cells for an interval; run more seeds"
    v, t, lo, hi = check.value, check.threshold, check.ci_low, check.ci_high
    acceptable = v >= t if check.comparison == ">=" else v <= t
    # The end of the interval that must cross the threshold for the side the effect is on.
    edge = (lo if check.comparison == ">=" else hi) if acceptable else (hi if check.comparison == ">=" else lo)
    more = more_seeds_to_decide(seeds, abs(v - edge), abs(v - t))
    effect = f"{check.name}: effect {v:+.3f} against threshold {check.comparison} {t:g}, interval [{lo:.3f}, {hi:.3f}]"
    if more is None:
        return f"{effect}; the effect sits on the threshold, so no number of seeds decides it"
    leaning = "approve" if acceptable else "reject"
    return f"{effect}; about {more} more seeds (beyond {seeds}) would likely decide it ({leaning}), the interval narrowing ~1/sqrt(n)"


def evaluate_looks(
    gate: GateSpec, cells: Sequence[CellResult], *, compute_metrics: Callable[..., Metrics], decide: Callable[..., Decision],
    fingerprint_mismatches: Sequence[str] = (), loss_curves: Mapping[str, dict[str, Any]] | None = None,
    through: int | None = None,
) -> tuple[Metrics, Decision]:
    """Evaluate look 1, 2, ... on the seeds each has read, stopping at the first verdict that is not inconclusive.

    Cells of later looks are ignored, so a run stopped early is complete. `through` stops after that look (a
    running gate asking whether its next look is needed). Undecided at the last planned look: `inconclusive`.
    `compute_metrics` and `decide` are decision.py's (passed in, so this module does not import the one that calls it).
    """
    spec = gate.sweep.sequential
    assert spec is not None
    confidence, planned = look_confidence(gate), spec.planned_looks
    last = planned if through is None else min(through, planned)
    for look in range(1, last + 1):
        seeds = spec.seeds_through(look)
        at_look = dataclasses.replace(gate, sweep=dataclasses.replace(gate.sweep, seeds=seeds))
        metrics = compute_metrics(at_look, [c for c in cells if c.seed in seeds], fingerprint_mismatches=fingerprint_mismatches,
                                  loss_curves=loss_curves, confidence=confidence)
        decision = decide(at_look, metrics, judge=judge)
        if decision.verdict != "inconclusive":
            break
    metrics = dataclasses.replace(metrics, looks=look, planned_looks=planned, seeds_used=seeds,
                                  stopped_early=look < planned, look_confidence=confidence)
    how = (f"intervals at confidence {confidence:.4f} (alpha {spec.alpha:g} split over {planned} looks x "
           f"{interval_checks(gate)} interval checks, Bonferroni)")
    if decision.verdict == "inconclusive":
        if look < planned:  # `through` stopped before the last look: nothing is final yet
            head = [f"undecided after look {look} of {planned} ({_seeds(seeds)}); {how}"]
        else:
            head = [f"inconclusive: no decision after all {planned} looks ({_seeds(seeds)}, "
                    f"sweep.sequential.max_seeds={spec.max_seeds}); {how}"]
            head += ["OPEN " + _open_reason(c, len(seeds)) for c in decision.checks if c.state == "undecided"]
    else:
        head = [f"verdict decided after look {look} of {planned} ({_seeds(seeds)}); {how}"]
    return metrics, dataclasses.replace(decision, reasons=tuple(head) + decision.reasons)


def stop_reason(gate: GateSpec, cells: Sequence[CellResult], look: int, *, compute_metrics: Callable[..., Metrics],
                decide: Callable[..., Decision], loss_curves: Mapping[str, dict[str, Any]] | None = None) -> str | None:
    """Why look `look` need not run: the looks before it already decided the verdict (None: it must run).

    Only approve, reject or invalid stop a running gate: an incomplete look may just be missing cells that another
    process (a pytest-xdist worker) measured, and the final evaluation reads them all.
    """
    spec = gate.sweep.sequential
    if spec is None or look <= 1:
        return None
    metrics, decision = evaluate_looks(gate, cells, compute_metrics=compute_metrics, decide=decide, through=look - 1,
                                       loss_curves=loss_curves)
    if decision.verdict not in ("approve", "reject", "invalid"):
        return None
    done = metrics.looks or 1
    return f"verdict decided after look {done} ({_seeds(spec.seeds_through(done))}): {decision.verdict}"
