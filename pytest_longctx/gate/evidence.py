"""What makes a verdict evidence: the answer-likelihood check, a sweep's sensitivity, misses the gate's own
settings caused, and the guard against a candidate whose change did nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .results import CellResult, Check, Metrics
from .spec import GateSpec
from .statistics import mean_delta_ci, wilcoxon_p

CEILING = 0.95  # baseline recall at or above which a recall drop has little room to show
FLOOR = 0.10  # ... at or below which the baseline has almost nothing to lose
NOOP_TOLERANCE = 1e-6  # nats: answer log-probabilities closer than this count as equal
LOGPROB_CHECK = "answer_logprob_delta"
NOT_MEASURED = "not measured"


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def logprob_metrics(base: Sequence[CellResult], cand: Sequence[CellResult], confidence: float) -> dict[str, Any]:
    """Metrics fields of the answer likelihood over paired cells (`base[i]` pairs with `cand[i]`).

    Each side's mean reads the cells that side measured; the delta, its bootstrap interval and the Wilcoxon
    signed-rank p read the cells both sides measured.
    """
    both = [(b.answer_logprob, c.answer_logprob) for b, c in zip(base, cand, strict=True)
            if b.answer_logprob is not None and c.answer_logprob is not None]
    deltas = [c - b for b, c in both]
    return {
        "answer_logprob": {
            "baseline": _mean([b.answer_logprob for b in base if b.answer_logprob is not None]),
            "candidate": _mean([c.answer_logprob for c in cand if c.answer_logprob is not None]),
        },
        "answer_logprob_delta": _mean(deltas),
        "answer_logprob_delta_ci": mean_delta_ci(deltas, confidence),
        "answer_logprob_wilcoxon_p": wilcoxon_p(deltas),
        "answer_logprob_cells": len(deltas),
    }


def unmeasured_sides(m: Metrics) -> list[str]:
    return [side for side in ("baseline", "candidate") if m.answer_logprob.get(side) is None]


def logprob_check(gate: GateSpec, m: Metrics) -> Check:
    """Mean paired change of the answer's log-probability: judged only when thresholds.answer_logprob is set.

    Not measured on a side (a served engine reports no likelihood): "not measured", which blocks nothing unless
    a threshold asks for it (then `decide` makes the gate incomplete).
    """
    t = gate.thresholds
    max_drop = t.answer_logprob_max_drop
    bound = -max_drop if max_drop is not None else 0.0
    lo, hi = m.answer_logprob_delta_ci if m.answer_logprob_delta_ci is not None else (None, None)
    if m.answer_logprob_cells == 0:
        missing = unmeasured_sides(m) or ["baseline", "candidate"]
        why = " and ".join(missing)
        return Check(LOGPROB_CHECK, None, bound, ">=", max_drop is None,
                     f"answer log-probability: not measured on {why} (served engines report no likelihood)", None, None, NOT_MEASURED)
    side = m.answer_logprob
    head = (f"answer log-probability {side['candidate']:.3f} (candidate) vs {side['baseline']:.3f} (baseline) nats over "
            f"{m.answer_logprob_cells} paired cells: mean delta {m.answer_logprob_delta:+.3f}"
            + ("" if lo is None else f" (CI {lo:+.3f}..{hi:+.3f})")
            + ("" if m.answer_logprob_wilcoxon_p is None else f", Wilcoxon p={m.answer_logprob_wilcoxon_p:.3g}"))
    if max_drop is None:
        return Check(LOGPROB_CHECK, m.answer_logprob_delta, bound, ">=", True,
                     f"{head}; not part of the rule (set thresholds.answer_logprob.max_drop to judge it)", lo, hi, "info")
    judged = lo if t.answer_logprob_policy == "bound" else m.answer_logprob_delta
    what = "the CI's lower end" if t.answer_logprob_policy == "bound" else "the mean drop"
    passed = judged is not None and judged >= bound - 1e-9
    return Check(LOGPROB_CHECK, m.answer_logprob_delta, bound, ">=", passed,
                 f"{head}; {what} may lose at most {max_drop:g} nats", lo, hi, t.answer_logprob_policy)


def sensitivity_notes(gate: GateSpec, base: Sequence[CellResult], measured_likelihood: bool) -> tuple[list[str], bool]:
    """Per task and length, where the baseline's recall sits at a ceiling or floor that hides a recall change.

    Returns the notes and whether the sweep can show a recall change nowhere (every task and length hidden).
    """
    likelihood = "the answer likelihood still can" if measured_likelihood else "and the answer likelihood was not measured"
    notes, groups, hidden = [], 0, 0
    for spec in gate.sweep.tasks:
        for length in gate.sweep.lengths:
            cells = [c for c in base if c.task == spec.name and c.length == length]
            if not cells:
                continue
            groups += 1
            recall = sum(c.found for c in cells) / len(cells)
            if recall >= CEILING:
                where = "in every cell" if recall == 1.0 else f"over {len(cells)} cells"
                notes.append(f"{spec.name} at {length}: baseline {recall:.2f} {where}; a recall drop cannot show here, {likelihood}")
            elif recall <= FLOOR:
                notes.append(f"{spec.name} at {length}: baseline {recall:.2f} over {len(cells)} cells (the task is too hard at this "
                             f"length); a recall drop cannot show here, {likelihood}")
            else:
                continue
            hidden += 1
    return notes, groups > 0 and hidden == groups


def truncation_notes(gate: GateSpec, sides: dict[str, Sequence[CellResult]]) -> list[str]:
    """Misses the gate's own settings caused: answers cut off by sweep.max_new_tokens, named with the fix."""
    notes = []
    limit = gate.sweep.max_new_tokens
    for side, cells in sides.items():
        misses = [c for c in cells if not c.found]
        truncated = sum(1 for c in misses if c.failure == "truncated")
        if truncated:
            notes.append(f"{truncated} of {len(misses)} {side} misses were truncated at max_new_tokens={limit}: "
                         "raise sweep.max_new_tokens")
    return notes


def noop_problem(gate: GateSpec, base: Sequence[CellResult], cand: Sequence[CellResult]) -> str | None:
    """The candidate changes a setting that should change computation, yet every paired cell came out the same.

    Same answer and same KV bytes in every cell, and (where both sides measured it everywhere) answer
    log-probabilities within NOOP_TOLERANCE: the change under test most likely never took effect.
    """
    settings = gate.candidate.computation_settings(gate.baseline)
    if not settings or not base:
        return None
    # A different score is a different answer too (a served engine's text may be normalised before it is kept).
    if any(b.answer != c.answer or b.found != c.found or b.kv_bytes != c.kv_bytes for b, c in zip(base, cand, strict=True)):
        return None
    measured = all(b.answer_logprob is not None and c.answer_logprob is not None for b, c in zip(base, cand, strict=True))
    if measured and any(abs(c.answer_logprob - b.answer_logprob) >= NOOP_TOLERANCE  # type: ignore[operator]
                        for b, c in zip(base, cand, strict=True)):
        return None
    names = ", ".join(f"`{s}`" for s in settings)
    if measured:
        return f"candidate {names} had no effect: identical answers and answer log-probabilities in every cell"
    return (f"candidate {names} had no effect: identical answers and KV bytes in every cell (the answer log-probability "
            "was not measured, so this guard is weaker: a change too small to alter any answer would also trip it)")
