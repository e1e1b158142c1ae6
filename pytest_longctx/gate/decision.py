"""The approval rule: paired metrics and statistics over the cells, thresholds checked, a Decision with reasons."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .results import CellResult, Check, Decision, Metrics, Verdict
from .spec import GateSpec
from .statistics import mcnemar_exact_p, min_detectable_drop, p95_ratio_ci, paired_difference_ci

EPS = 1e-9  # recall fractions are ratios of small integers; compare them without float noise
Key = tuple[str, int, float, int]


def expected_keys(gate: GateSpec) -> list[Key]:
    from .sweep import plan_cells

    return [(c.task, c.length, round(c.depth, 6), c.seed) for c in plan_cells(gate.sweep)]


def paired_by_content(gate: GateSpec) -> bool:
    """Sides whose prompts differ by design (a prompt layout, another model's tokenizer) pair on the cell's
    content, not on identical token ids."""
    return any(v.changes_tokens for v in gate.variants)


def positioned_tasks(gate: GateSpec) -> set[str]:
    from ..tasks import uses_depth

    return {spec.name for spec in gate.sweep.tasks if uses_depth(spec)}


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


def compute_metrics(
    gate: GateSpec, cells: Sequence[CellResult], *, fingerprint_mismatches: Sequence[str] = (),
    loss_curves: Mapping[str, dict[str, Any]] | None = None, confidence: float | None = None,
) -> Metrics:
    """Metrics over the cells both variants measured without error; missing, errored and mismatched cells are counted.

    `confidence` sets every interval's level (a sequential look's); by default the recall interval reads
    thresholds.middle_recall.alpha and the bootstrap intervals thresholds.p95_latency_ratio.confidence.
    """
    from .engine_figures import cold_checks, kv_figures
    from .evidence import logprob_metrics, noop_problem, sensitivity_notes, truncation_notes

    names = (gate.baseline.name, gate.candidate.name)
    base_name, cand_name = names
    by_variant: dict[str, dict[Key, CellResult]] = {n: {} for n in names}
    for cell in cells:
        if cell.variant in by_variant:
            by_variant[cell.variant][cell.key] = cell
    keys = expected_keys(gate)
    missing = sum(1 for n in names for k in keys if k not in by_variant[n])
    errored = sum(1 for n in names for k in keys if k in by_variant[n] and by_variant[n][k].error is not None)
    paired = [k for k in keys if all(k in by_variant[n] and by_variant[n][k].error is None for n in names)]
    mismatched = 0 if paired_by_content(gate) else sum(
        1 for k in paired if by_variant[base_name][k].prompt_sha256 != by_variant[cand_name][k].prompt_sha256
    )
    lo, hi = gate.sweep.middle
    positioned = positioned_tasks(gate)
    # Middle-depth recall is about where evidence sits; a family without a position (aggregation) has no middle.
    middle = [k for k in paired if k[0] in positioned and lo - EPS <= k[2] <= hi + EPS]

    def side(name: str, subset: list[Key]) -> list[CellResult]:
        return [by_variant[name][k] for k in subset]

    def timing(field: str) -> tuple[list[float], list[float]]:
        pairs = [(getattr(b, field), getattr(c, field)) for b, c in zip(side(base_name, paired), side(cand_name, paired), strict=True)]
        pairs = [(b, c) for b, c in pairs if b is not None and c is not None]
        return [b for b, _ in pairs], [c for _, c in pairs]

    recall_confidence = confidence or 1 - gate.thresholds.middle_recall_alpha
    confidence = confidence or gate.thresholds.latency_confidence
    latency: dict[str, tuple[dict[str, float | None], float | None, tuple[float, float] | None]] = {}
    for field in ("total_s", "prefill_s", "decode_s_per_token"):
        b, c = timing(field)
        p95s = {"baseline": _p95(b), "candidate": _p95(c)}
        latency[field] = (p95s, _ratio(p95s["candidate"], p95s["baseline"]), p95_ratio_ci(b, c, confidence))

    source = gate.thresholds.memory_source
    if source == "auto":
        has_peak = bool(paired) and all(c.peak_bytes is not None for n in names for c in side(n, paired))
        source = "peak_bytes" if has_peak else "kv_bytes"
    memory = {n: _mean(float(getattr(c, source)) for c in side(n, paired) if getattr(c, source) is not None) for n in names}

    base_mid, cand_mid = side(base_name, middle), side(cand_name, middle)
    baseline_only = sum(1 for b, c in zip(base_mid, cand_mid, strict=True) if b.found and not c.found)
    candidate_only = sum(1 for b, c in zip(base_mid, cand_mid, strict=True) if c.found and not b.found)
    middle_recall = {"baseline": _mean(float(c.found) for c in base_mid), "candidate": _mean(float(c.found) for c in cand_mid)}
    base_mr, cand_mr = middle_recall["baseline"], middle_recall["candidate"]
    delta = None if base_mr is None or cand_mr is None else cand_mr - base_mr
    total, prefill, decode = latency["total_s"], latency["prefill_s"], latency["decode_s_per_token"]
    by_task, by_length = _recall_tables(gate, [side(base_name, paired), side(cand_name, paired)])
    effective, effective_ratio = _effective_lengths(gate, by_length)
    labelled = tuple(zip(("baseline", "candidate"), names, strict=True))
    curves = {label: dict((loss_curves or {})[n]) for label, n in labelled if n in (loss_curves or {})}
    loss_ratio, worst = _loss_ratio(curves)
    t = gate.thresholds
    recall_bound = -t.middle_recall_margin if t.middle_recall_policy == "noninferiority" else t.middle_recall_min_delta
    detectable = None if not middle or not middle_recall["baseline"] else min_detectable_drop(
        len(middle), middle_recall["baseline"], confidence=recall_confidence, threshold=recall_bound)
    likelihood = logprob_metrics(side(base_name, paired), side(cand_name, paired), confidence)
    notes, insensitive = sensitivity_notes(gate, side(base_name, paired), likelihood["answer_logprob_cells"] > 0)
    by_label = {label: side(n, paired) for label, n in labelled}
    figures = kv_figures(by_label, max(gate.sweep.lengths), _ratio(memory[cand_name], memory[base_name]),
                         kv_memory=source == "kv_bytes")
    return Metrics(
        **likelihood,
        **figures,
        cold_check=cold_checks(by_label),
        sensitivity=tuple(notes),
        insensitive=insensitive,
        configuration=tuple(truncation_notes(gate, {"baseline": side(base_name, paired), "candidate": side(cand_name, paired)})),
        noop=noop_problem(gate, side(base_name, paired), side(cand_name, paired)),
        middle_recall_detectable_drop=detectable,
        prefill_tokens={label: _mean(float(c.tokens) for c in side(n, paired)) for label, n in labelled},
        loss_curves=curves,
        loss_ratio=loss_ratio,
        loss_worst_bucket=worst,
        recall_by_task=by_task,
        recall_by_length=by_length,
        effective_length=effective,
        effective_length_ratio=effective_ratio,
        failures={label: _failures(side(n, paired)) for label, n in labelled},
        middle_recall=middle_recall,
        recall={"baseline": _mean(float(c.found) for c in side(base_name, paired)),
                "candidate": _mean(float(c.found) for c in side(cand_name, paired))},
        p95_latency_s=total[0],
        p95_latency_ratio=total[1],
        memory_bytes={"baseline": memory[base_name], "candidate": memory[cand_name]},
        memory_source=source,
        kv_source={label: "/".join(sorted({c.kv_source for c in side(n, paired)})) or "n/a"
                   for label, n in labelled},
        paired_cells=len(paired),
        middle_cells=len(middle),
        expected_cells=len(keys),
        errored_cells=errored,
        missing_cells=missing,
        middle_recall_delta=delta,
        middle_recall_delta_ci=paired_difference_ci(baseline_only, candidate_only, len(middle), recall_confidence),
        discordant={"baseline_only": baseline_only, "candidate_only": candidate_only},
        mcnemar_p=mcnemar_exact_p(baseline_only, candidate_only) if middle else None,
        p95_latency_ratio_ci=total[2],
        p95_prefill_s=prefill[0],
        p95_prefill_ratio=prefill[1],
        p95_prefill_ratio_ci=prefill[2],
        p95_decode_s=decode[0],
        p95_decode_ratio=decode[1],
        p95_decode_ratio_ci=decode[2],
        latency_compared=gate.captured_baseline is None,
        prompt_mismatches=mismatched,
        fingerprint_mismatches=tuple(fingerprint_mismatches),
    )


def _recall_tables(
    gate: GateSpec, sides: list[list[CellResult]],
) -> tuple[dict[str, dict[str, float | None]], dict[str, dict[str, float | None]]]:
    """Recall per task family and per length, for each side (over paired cells; JSON-ready string keys)."""
    labels = ("baseline", "candidate")
    by_task = {
        spec.name: {label: _mean(float(c.found) for c in cells if c.task == spec.name) for label, cells in zip(labels, sides, strict=True)}
        for spec in gate.sweep.tasks
    }
    by_length = {
        label: {str(n): _mean(float(c.found) for c in cells if c.length == n) for n in gate.sweep.lengths}
        for label, cells in zip(labels, sides, strict=True)
    }
    return by_task, by_length


def _effective_lengths(gate: GateSpec, by_length: dict[str, dict[str, float | None]]) -> tuple[dict[str, int | None], float | None]:
    from .context_length import effective_length, effective_length_ratio

    threshold = gate.thresholds.effective_length_recall
    tables = {label: {int(n): r for n, r in table.items() if r is not None} for label, table in by_length.items()}
    if not all(tables.values()) or set(tables["baseline"]) != set(tables["candidate"]):
        return {label: None for label in tables}, None
    lengths = {label: effective_length(table, threshold) for label, table in tables.items()}
    return lengths, effective_length_ratio(tables["baseline"], tables["candidate"], threshold)


def _loss_ratio(curves: dict[str, dict[str, Any]]) -> tuple[float | None, int | None]:
    if set(curves) != {"baseline", "candidate"}:
        return None, None
    from .loss_curve import LossCurve, loss_ratio

    def curve(c: dict[str, Any]) -> LossCurve:
        return LossCurve(tuple(c["edges"]), tuple(c["losses"]), tuple(c["counts"]), c["tokens"])

    ratio, worst = loss_ratio(curve(curves["baseline"]), curve(curves["candidate"]))
    return ratio, worst


def _failures(cells: list[CellResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for cell in cells:
        if cell.failure is not None:
            counts[cell.failure] = counts.get(cell.failure, 0) + 1
    return counts


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_ci(ci: tuple[float, float] | None, digits: int = 3) -> str:
    return "" if ci is None else f" (CI {ci[0]:.{digits}f}..{ci[1]:.{digits}f})"


def _recall_check(gate: GateSpec, m: Metrics) -> Check:
    t = gate.thresholds
    mr, ci, delta = m.middle_recall, m.middle_recall_delta_ci, m.middle_recall_delta
    head = (
        f"middle-depth recall {_fmt(mr['candidate'], 2)} (candidate) vs {_fmt(mr['baseline'], 2)} (baseline) over "
        f"{m.middle_cells} paired cells: delta {_fmt(delta, 2)}{_fmt_ci(ci, 2)}, McNemar p={_fmt(m.mcnemar_p, 3)}"
    )
    lo, hi = ci if ci is not None else (None, None)
    if t.middle_recall_policy == "noninferiority":
        passed = hi is not None and hi >= -t.middle_recall_margin - EPS
        detail = f"{head}; non-inferior unless the CI's upper end is below -{t.middle_recall_margin:.2f}{_power_note(m)}"
        return Check("middle_recall_delta", delta, -t.middle_recall_margin, ">=", passed, detail, lo, hi, "noninferiority")
    passed = delta is not None and delta >= t.middle_recall_min_delta - EPS
    return Check("middle_recall_delta", delta, t.middle_recall_min_delta, ">=", passed,
                 f"{head}; required >= {t.middle_recall_min_delta:.2f}{_power_note(m)}", lo, hi, "strict")


def _power_note(m: Metrics) -> str:
    """The smallest drop the recall interval shows with 80 % power, at these cells and this baseline rate."""
    base = m.middle_recall.get("baseline")
    if not m.middle_cells or base is None:
        return ""
    drop = m.middle_recall_detectable_drop
    shown = f"a drop of {drop:.2f} or more" if drop is not None else "no drop up to the baseline's own recall"
    return (f"; with {m.middle_cells} cells at baseline {base:.2f} its interval shows {shown} with 80 % power "
            "(exact binomial; `longctx power` plans more)")


def _latency_check(name: str, label: str, ratio: float | None, ci: tuple[float, float] | None,
                   p95: dict[str, float | None], bound: float, policy: str, compared: bool, unit: Callable[[float | None], str]) -> Check:
    lo, hi = ci if ci is not None else (None, None)
    if not compared:
        return Check(name, ratio, bound, "<=", True,
                     f"{label}: not compared, the baseline was captured in an earlier run (timings do not transfer)", lo, hi, "skipped")
    judged = hi if policy == "bound" else ratio
    passed = judged is not None and judged <= bound + EPS
    what = "upper CI bound" if policy == "bound" else "ratio"
    return Check(name, ratio, bound, "<=", passed,
                 f"{label} {unit(p95['candidate'])} vs {unit(p95['baseline'])}: ratio {_fmt(ratio)}{_fmt_ci(ci)}, "
                 f"{what} allowed <= {bound:.2f}", lo, hi, policy)


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def _millis(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f} ms/token"


def decide(gate: GateSpec, metrics: Metrics, *, judge: Callable[[Check], Check] | None = None) -> Decision:
    """Apply the approval rule. Fail closed: mismatched data is `invalid`, missing or errored cells `incomplete`.

    `judge` (a sequential look, see sequential.py) re-reads each check by its interval and sets its state; a
    check left undecided makes the verdict `inconclusive` unless another one already rejects.
    """
    from .engine_figures import engine_notes, unverified_timing
    from .evidence import NOT_MEASURED, logprob_check, unmeasured_sides

    t, m = gate.thresholds, metrics
    checks = [
        _recall_check(gate, m),
        logprob_check(gate, m),
        _latency_check("p95_latency_ratio", "p95 end-to-end latency", m.p95_latency_ratio, m.p95_latency_ratio_ci,
                       m.p95_latency_s, t.p95_latency_ratio_max, t.p95_latency_policy, m.latency_compared, _seconds),
    ]
    if t.p95_prefill_ratio_max is not None:
        checks.append(_latency_check("p95_prefill_ratio", "p95 prefill (time to first token)", m.p95_prefill_ratio, m.p95_prefill_ratio_ci,
                                     m.p95_prefill_s, t.p95_prefill_ratio_max, t.p95_prefill_policy, m.latency_compared, _seconds))
    if t.p95_decode_ratio_max is not None:
        checks.append(_latency_check("p95_decode_ratio", "p95 decode time per token", m.p95_decode_ratio, m.p95_decode_ratio_ci,
                                     m.p95_decode_s, t.p95_decode_ratio_max, t.p95_decode_policy, m.latency_compared, _millis))
    checks.append(Check(
        "memory_ratio", m.memory_ratio, t.memory_ratio_max, "<=",
        m.memory_ratio is not None and m.memory_ratio <= t.memory_ratio_max + EPS,
        f"memory ({m.memory_label}) {_fmt(_mib(m.memory_bytes['candidate']), 1)} MiB vs "
        f"{_fmt(_mib(m.memory_bytes['baseline']), 1)} MiB: ratio {_fmt(m.memory_ratio)}, allowed <= {t.memory_ratio_max:.2f}",
    ))
    if t.effective_length_ratio_min is not None:
        eff, ratio = m.effective_length, m.effective_length_ratio
        # A baseline measured at every length that holds at none has no effective length to lose; with
        # lengths missing there is no ratio either, and that fails (the cell counts make it incomplete).
        measured = m.recall_by_length.get("baseline", {})
        nothing_to_lose = ratio is None and bool(measured) and all(r is not None for r in measured.values()) and eff.get("baseline") is None
        why = "; the baseline holds at no swept length, so there is nothing to lose" if nothing_to_lose else ""
        checks.append(Check(
            "effective_length_ratio", ratio, t.effective_length_ratio_min, ">=",
            nothing_to_lose or (ratio is not None and ratio >= t.effective_length_ratio_min - EPS),
            f"effective context length (recall >= {t.effective_length_recall:.2f}) {eff.get('candidate')} vs "
            f"{eff.get('baseline')} tokens: ratio {_fmt(ratio)}, required >= {t.effective_length_ratio_min:.2f}{why}",
        ))
    if t.loss_ratio_max is not None:
        edges = m.loss_curves.get("baseline", {}).get("edges", [])
        worst = m.loss_worst_bucket
        where = f" at positions {edges[worst]}-{edges[worst + 1]}" if worst is not None and edges else ""
        checks.append(Check(
            "loss_ratio", m.loss_ratio, t.loss_ratio_max, "<=", m.loss_ratio is not None and m.loss_ratio <= t.loss_ratio_max + EPS,
            f"next-token loss, worst position bucket{where}: ratio {_fmt(m.loss_ratio)}, allowed <= {t.loss_ratio_max:.2f}",
        ))
    if judge is not None:
        checks = [judge(c) for c in checks]
    unjudged = ("skipped", "info", NOT_MEASURED)
    reasons = [("OPEN " if c.state == "undecided" else "PASS " if c.passed else "FAIL ") + c.detail
               for c in checks if c.policy not in unjudged]
    reasons += ["NOTE " + c.detail for c in checks if c.policy in unjudged]
    reasons += ["CONFIG " + note for note in m.configuration] + ["NOTE " + note for note in m.sensitivity]
    reasons += ["NOTE " + note for note in engine_notes(m)]
    problems = []
    if m.fingerprint_mismatches:
        problems.append("the captured baseline does not match this run: " + "; ".join(m.fingerprint_mismatches))
    if m.prompt_mismatches:
        problems.append(f"{m.prompt_mismatches} paired cells gave the two variants different prompts (prompt_sha256 differs)")
    if problems or m.noop:
        return Decision("invalid", tuple([f"cannot compare: {p}" for p in problems] + ([m.noop] if m.noop else []) + reasons),
                        tuple(checks))
    gaps = []
    if m.missing_cells:
        gaps.append(f"{m.missing_cells} of {2 * m.expected_cells} cells were not run (deselected, interrupted or skipped)")
    if m.errored_cells:
        gaps.append(f"{m.errored_cells} cells errored")
    if gate.sweep.loss is not None and set(m.loss_curves) != {"baseline", "candidate"}:
        gaps.append("the loss curve was not measured on both sides")
    if t.answer_logprob_max_drop is not None and m.answer_logprob_cells == 0 and m.paired_cells:
        sides = " and ".join(unmeasured_sides(m)) or "both sides together"
        gaps.append(f"thresholds.answer_logprob needs the answer log-probability, which was not measured on {sides}")
    if gate.sweep.require_sensitivity and m.insensitive:
        gaps.append("sweep.require_sensitivity: the baseline sits at a recall ceiling or floor at every task and length, so "
                    "no recall change could show (use longer lengths, a harder task, or more distractors)")
    if gaps:
        return Decision("incomplete", tuple(["cannot approve: " + "; ".join(gaps)] + reasons), tuple(checks))
    if any(c.state == "undecided" for c in checks) and not any(c.state == "reject" for c in checks):
        return Decision("inconclusive", tuple(reasons), tuple(checks))
    verdict: Verdict = "approve" if all(c.passed for c in checks) else "reject"
    unverified = unverified_timing(m)
    if unverified is not None:  # a warm prefill flatters one side's latency: never approve on it
        if verdict == "approve":
            return Decision("inconclusive", tuple([f"cannot approve: {unverified}"] + reasons), tuple(checks))
        reasons.append(f"NOTE {unverified}")
    return Decision(verdict, tuple(reasons), tuple(checks))


def _mib(value: float | None) -> float | None:
    return None if value is None else value / 2**20


def evaluate(
    gate: GateSpec, cells: Sequence[CellResult], *, fingerprint_mismatches: Sequence[str] = (),
    loss_curves: Mapping[str, dict[str, Any]] | None = None,
) -> tuple[Metrics, Decision]:
    """The metrics and decision of a finished run; a sequential gate's are those of the look it stopped at."""
    if gate.sweep.sequential is not None:
        from .sequential import evaluate_looks

        return evaluate_looks(gate, cells, compute_metrics=compute_metrics, decide=decide,
                              fingerprint_mismatches=fingerprint_mismatches, loss_curves=loss_curves)
    metrics = compute_metrics(gate, cells, fingerprint_mismatches=fingerprint_mismatches, loss_curves=loss_curves)
    return metrics, decide(gate, metrics)
