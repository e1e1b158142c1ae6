"""A gate's decision and numbers in words: the metric rows every output shares, the terminal table, Markdown for
pull requests and job summaries, and JUnit properties. Pure functions of `GateResults`."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..gate.results import Check, GateResults
from .escape import md_code, md_escape, one_line
from .planted import planted_notice, planted_regressions
from .settings import NA, NONE, variant_settings

Status = Literal["pass", "fail", "info", "skipped", "unmeasured", "undecided"]
STATUS_WORDS: dict[str, str] = {"pass": "pass", "fail": "FAIL", "info": "info", "skipped": "not compared", "unmeasured": "not measured",
                                "undecided": "UNDECIDED"}
VERDICT_MEANING: dict[str, str] = {
    "approve": "the candidate met every threshold of the rule",
    "reject": "the candidate missed at least one threshold of the rule",
    "incomplete": "not every cell was measured, so the gate cannot approve (it fails closed)",
    "invalid": "the two sides cannot be compared, so the numbers decide nothing",
    "inconclusive": "every planned look ran and some check is still undecided: more seeds would decide it",
}
_MARKDOWN_MARK = {"approve": "✅", "reject": "❌", "incomplete": "⚠️", "invalid": "⛔", "inconclusive": "❔"}
_POLICY_NOTE = {"bound": "upper CI bound", "noninferiority": "CI upper end", "skipped": "not compared"}


# ----------------------------------------------------------------------------- formatting


def fmt_number(value: float | None, digits: int = 3, *, signed: bool = False) -> str:
    """A float to `digits` decimals, "n/a" for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def fmt_bytes(value: float | None) -> str:
    """Bytes in binary units (B, KiB, MiB, GiB), "n/a" for None."""
    if value is None:
        return NA
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def fmt_seconds(value: float | None, *, scale: float = 1.0, digits: int = 3) -> str:
    return NA if value is None else f"{value * scale:.{digits}f}"


def fmt_millis(value: float | None) -> str:
    return fmt_seconds(value, scale=1000.0, digits=2)


def fmt_threshold(check: Check) -> str:
    """">= 0.00", "<= 1.10 (upper CI bound)"; more decimals only when the threshold has them."""
    t = check.threshold
    text = f"{t:.2f}" if round(t, 2) == t else f"{t:g}"
    note = _POLICY_NOTE.get(getattr(check, "policy", "") or "")
    return f"{check.comparison} {text}" + (f" ({note})" if note else "")


def fmt_ci(low: float | None, high: float | None, digits: int = 3) -> str:
    return NONE if low is None or high is None else f"[{low:.{digits}f}, {high:.{digits}f}]"


# ----------------------------------------------------------------------------- metric rows


@dataclass(frozen=True)
class MetricRow:
    """One line of the approval metrics, already formatted: the HTML, terminal and Markdown tables all print these."""

    metric: str
    baseline: str
    candidate: str
    change: str
    ci: str
    threshold: str
    status: Status
    detail: str


@dataclass(frozen=True)
class _Family:
    label: str
    values: str  # Metrics field: {"baseline": x, "candidate": y}
    change: str | None  # Metrics field holding the ratio or delta; None: computed from the values
    ci: str | None  # Metrics field holding a (low, high) pair
    check: str | None  # the Check that judges it
    how: Literal["delta", "ratio"]
    fmt: Callable[[float | None], str]


_FAMILIES = (
    _Family("middle-band recall", "middle_recall", "middle_recall_delta", "middle_recall_delta_ci", "middle_recall_delta", "delta",
            fmt_number),
    _Family("recall, all depths", "recall", None, None, None, "delta", fmt_number),
    # Teacher-forced log p of the expected answer: a continuous signal where recall sits at a ceiling or floor.
    _Family("answer log-probability (nats)", "answer_logprob", "answer_logprob_delta", "answer_logprob_delta_ci", "answer_logprob_delta",
            "delta", lambda v: "not measured" if v is None else f"{v:.3f}"),
    _Family("p95 latency (s)", "p95_latency_s", "p95_latency_ratio", "p95_latency_ratio_ci", "p95_latency_ratio", "ratio", fmt_seconds),
    _Family("p95 prefill (s)", "p95_prefill_s", "p95_prefill_ratio", "p95_prefill_ratio_ci", "p95_prefill_ratio", "ratio", fmt_seconds),
    _Family("p95 decode (ms/token)", "p95_decode_s", "p95_decode_ratio", "p95_decode_ratio_ci", "p95_decode_ratio", "ratio", fmt_millis),
    _Family("memory", "memory_bytes", "memory_ratio", None, "memory_ratio", "ratio", fmt_bytes),
    # The engines' own caches: token slots each allocated; the change is tokens held per byte (at equal memory).
    _Family("KV capacity (tokens; ratio: per byte)", "kv_capacity_tokens", "kv_capacity_ratio", None, None, "ratio",
            lambda v: "n/a" if v is None else f"{v:.0f}"),
    # What a prompt-level change (retrieval, a history budget) saves: the tokens each query prefills.
    _Family("prompt tokens per query", "prefill_tokens", None, None, None, "ratio", lambda v: "n/a" if v is None else f"{v:.0f}"),
)
LOSS_METRIC = "next-token loss, worst bucket (nats)"  # the row the report's loss section repeats
_COUNTS = ("paired_cells", "middle_cells", "expected_cells", "errored_cells", "missing_cells")
# Shown by their own rows (effective length, loss) or the report's own sections (recall by task and length, misses).
_SHOWN_ELSEWHERE = {"memory_source", "kv_source", *_COUNTS, "effective_length", "effective_length_ratio", "loss_curves", "loss_ratio",
                    "loss_worst_bucket", "recall_by_task", "recall_by_length", "failures",
                    "sensitivity", "insensitive", "configuration", "noop",
                    "kv_engine", "cold_check"}  # the last six: in the decision's reasons


def _pair(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return float(value[0]), float(value[1])
    return None


def _status(check: Check | None) -> Status:
    if check is None:
        return "info"
    policy = getattr(check, "policy", None)
    if getattr(check, "state", None) == "undecided":
        return "undecided"
    if policy == "skipped":
        return "skipped"
    if policy == "not measured":
        return "unmeasured" if check.passed else "fail"
    if policy == "info":
        return "info"
    return "pass" if check.passed else "fail"


def _threshold(check: Check) -> str:
    """A check that judges nothing (no threshold set) shows none."""
    return NONE if check.policy == "info" or (check.policy == "not measured" and check.passed) else fmt_threshold(check)


def metric_rows(results: GateResults) -> tuple[MetricRow, ...]:
    """Each metric the run measured with both variants, its ratio or delta, its CI and the check that judges it.

    Metrics that are absent (an older results file) are left out; checks this module does not know get a row of
    their own, so nothing the decision read goes unshown.
    """
    m = results.metrics
    checks = {c.name: c for c in results.decision.checks}
    rows = []
    used: set[str] = set()
    for fam in _FAMILIES:
        values = getattr(m, fam.values, None)
        check = checks.get(fam.check) if fam.check else None
        if not values and check is None:
            continue
        values = values or {}
        base, cand = values.get("baseline"), values.get("candidate")
        if check is not None:
            change: float | None = check.value
        elif fam.change is not None and getattr(m, fam.change, None) is not None:
            change = getattr(m, fam.change)
        elif fam.how == "delta":
            change = None if base is None or cand is None else cand - base
        else:
            change = None if base is None or cand is None or base == 0 else cand / base
        ci: tuple[float, float | None] | None
        if check is not None and check.ci_low is not None:
            ci = (check.ci_low, check.ci_high)
        else:
            ci = _pair(getattr(m, fam.ci, None) if fam.ci else None)
        label = f"{fam.label} ({m.memory_label})" if fam.values == "memory_bytes" else fam.label
        text = fmt_number(change, signed=fam.how == "delta")
        rows.append(MetricRow(
            metric=label,
            baseline=fam.fmt(base),
            candidate=fam.fmt(cand),
            change=text if change is None else f"{text} ({fam.how})",
            ci=fmt_ci(*ci) if ci else NONE,
            threshold=_threshold(check) if check is not None else NONE,
            status=_status(check),
            detail=check.detail if check is not None else "not part of the rule",
        ))
        if check is not None:
            used.add(check.name)
    for name, build in (("effective_length_ratio", _effective_length_row), ("loss_ratio", _loss_row)):
        row = build(results, checks.get(name))
        if row is not None:
            rows.append(row)
            used.add(name)
    for check in results.decision.checks:  # checks this module does not know how to pair with a metric
        if check.name not in used:
            rows.append(MetricRow(check.name, NONE, NONE, fmt_number(check.value), fmt_ci(check.ci_low, check.ci_high),
                                  fmt_threshold(check), _status(check), check.detail))
    return tuple(rows)


def _judged(check: Check | None) -> tuple[str, Status, str]:
    """Threshold, status and detail of a row that a check may judge; "not part of the rule" without one."""
    if check is None:
        return NONE, "info", "not part of the rule"
    return fmt_threshold(check), _status(check), check.detail


def effective_length_recall(results: GateResults) -> float:
    """The recall a length must hold to count towards the effective context length."""
    thresholds = results.gate.get("thresholds", {})
    return float(thresholds.get("effective_length_recall", 0.85) if isinstance(thresholds, Mapping) else 0.85)


def _effective_length_row(results: GateResults, check: Check | None) -> MetricRow | None:
    m = results.metrics
    if not m.effective_length and check is None:
        return None
    ratio = check.value if check is not None else m.effective_length_ratio

    def tokens(value: int | None) -> str:
        return NA if value is None else str(value)

    return MetricRow(f"effective length (tokens, recall >= {effective_length_recall(results):.2f})",
                     tokens(m.effective_length.get("baseline")), tokens(m.effective_length.get("candidate")),
                     NA if ratio is None else f"{fmt_number(ratio)} (ratio)", NONE, *_judged(check))


def worst_bucket_span(results: GateResults) -> tuple[int, int] | None:
    """Token positions [start, end) of the loss curve's worst bucket, when the run recorded one."""
    m = results.metrics
    edges = next((c.get("edges") for c in m.loss_curves.values() if c.get("edges")), None)
    if m.loss_worst_bucket is None or not edges or m.loss_worst_bucket + 1 >= len(edges):
        return None
    return int(edges[m.loss_worst_bucket]), int(edges[m.loss_worst_bucket + 1])


def _loss_row(results: GateResults, check: Check | None) -> MetricRow | None:
    m = results.metrics
    if not m.loss_curves and check is None:
        return None

    def worst(side: str) -> float | None:
        losses = m.loss_curves.get(side, {}).get("losses") or []
        return losses[m.loss_worst_bucket] if m.loss_worst_bucket is not None and m.loss_worst_bucket < len(losses) else None

    ratio = check.value if check is not None else m.loss_ratio
    threshold, status, detail = _judged(check)
    span = worst_bucket_span(results)
    if check is None and span is not None:
        detail = f"worst bucket: positions {span[0]}-{span[1]}; not part of the rule"
    return MetricRow(LOSS_METRIC, fmt_number(worst("baseline")), fmt_number(worst("candidate")),
                     NA if ratio is None else f"{fmt_number(ratio)} (ratio)", NONE, threshold, status, detail)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return fmt_number(value, 4)
    if value is None:
        return NA
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_describe(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_describe(v) for v in value)
    return str(value)


def other_metrics(results: GateResults) -> tuple[tuple[str, str], ...]:
    """Recorded metrics that no metric row shows (test statistics, mismatch counts...), as (name, text)."""
    consumed = set(_SHOWN_ELSEWHERE)
    for fam in _FAMILIES:
        consumed.update(f for f in (fam.values, fam.change, fam.ci) if f)
    rows = []
    for f in dataclasses.fields(results.metrics):
        value = getattr(results.metrics, f.name)
        if f.name in consumed or (isinstance(value, (dict, list, tuple)) and not value):
            continue
        rows.append((f.name.replace("_", " "), _describe(value)))
    return tuple(rows)


def cell_counts(results: GateResults) -> str:
    m = results.metrics
    counts = (f"{m.paired_cells}/{m.expected_cells} cells paired, {m.middle_cells} in the middle band, "
              f"{m.errored_cells} errored, {m.missing_cells} missing")
    if m.looks is None:
        return counts
    seeds = m.seeds_used
    early = "stopped early" if m.stopped_early else "every look ran"
    return f"{counts}; sequential: look {m.looks} of {m.planned_looks} (seeds {seeds[0]}-{seeds[-1]}), {early}" if seeds else counts


def gate_name(results: GateResults) -> str:
    return str(results.gate.get("name", "unnamed gate"))


def model_ref(results: GateResults) -> str:
    model = results.gate.get("model", {})
    return str(model.get("ref", NA) if isinstance(model, dict) else model)


# ----------------------------------------------------------------------------- recall by task


def task_families(results: GateResults) -> dict[str, str]:
    """Task name -> family, from the recorded sweep (older files list bare names; a name's family precedes "(")."""
    out: dict[str, str] = {}
    for record in results.gate.get("sweep", {}).get("tasks", ()) or ():
        if isinstance(record, Mapping):
            out[str(record.get("name"))] = str(record.get("family"))
        else:
            out[str(record)] = str(record).split("(", 1)[0]
    for cell in results.cells:
        out.setdefault(cell.task, cell.task.split("(", 1)[0])
    return out


@dataclass(frozen=True)
class TaskRecallRow:
    task: str
    family: str
    baseline: str
    candidate: str
    delta: str


def task_recall_rows(results: GateResults) -> tuple[TaskRecallRow, ...]:
    """Recall per task over paired cells (`Metrics.recall_by_task`), in sweep order; () for older results."""
    families = task_families(results)
    rows = []
    for task, values in results.metrics.recall_by_task.items():
        base, cand = values.get("baseline"), values.get("candidate")
        delta = None if base is None or cand is None else cand - base
        rows.append(TaskRecallRow(task, families.get(task, task), fmt_number(base), fmt_number(cand), fmt_number(delta, signed=True)))
    return tuple(rows)


# ----------------------------------------------------------------------------- terminal


_TABLE_HEAD = ("metric", "baseline", "candidate", "ratio / delta", "CI", "threshold", "result")
_TASK_HEAD = ("recall by task", "baseline", "candidate", "delta")


def _columns(head: Sequence[str], body: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    body = [[one_line(cell) for cell in line] for line in body]  # a task name or check from a results file: one line
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(head), line(["-" * w for w in widths]), *(line(b) for b in body)]


def _table(rows: Sequence[MetricRow]) -> list[str]:
    body = [(r.metric, r.baseline, r.candidate, r.change, r.ci, r.threshold, STATUS_WORDS[r.status]) for r in rows]
    return _columns(_TABLE_HEAD, body, {1, 2, 3})


def terminal_lines(results: GateResults, written: Iterable[Path] = ()) -> list[str]:
    """The gate's block in pytest's `longctx gate` section: verdict, the metrics table, recall per task when the
    gate swept several, the reasons, the files."""
    d = results.decision
    m = results.metrics
    looks = "" if m.looks is None else f", look {m.looks} of {m.planned_looks}" + (", stopped early" if m.stopped_early else "")
    lines = [f"gate {one_line(gate_name(results))}: {one_line(d.verdict.upper())} ({m.paired_cells}/{m.expected_cells} cells paired{looks})"
             f" - {VERDICT_MEANING.get(d.verdict, d.verdict)}"]
    notice = planted_notice(results)
    if notice is not None:
        lines.append(f"  !! {notice}")
    lines.extend("  " + row for row in _table(metric_rows(results)))
    tasks = task_recall_rows(results)
    if len(tasks) > 1:
        body = [(t.task, t.baseline, t.candidate, t.delta) for t in tasks]
        lines.extend("  " + row for row in _columns(_TASK_HEAD, body, {1, 2, 3}))
    # Reasons quote answers and names; a newline or an escape sequence in one must not forge a line of its own.
    lines.extend(f"  {one_line(reason)}" for reason in d.reasons)
    lines.extend(f"  wrote {one_line(str(p))}" for p in written)
    return lines


# ----------------------------------------------------------------------------- Markdown


def markdown(results: GateResults, written: Iterable[Path] = ()) -> str:
    """The summary for a pull-request comment or `$GITHUB_STEP_SUMMARY`: verdict, metrics vs thresholds, reasons."""
    d = results.decision
    mark = _MARKDOWN_MARK.get(d.verdict, "")
    variants = " · ".join(f"**{md_escape(name)}**: {md_escape(settings)}" for name, settings in variant_settings(results))
    out = [
        f"### {mark} longctx gate {md_code(gate_name(results))}: **{md_escape(d.verdict.upper())}**",
        "",
        f"{md_escape(VERDICT_MEANING.get(d.verdict, d.verdict)).capitalize()}. "
        f"Model {md_code(model_ref(results))}; {md_escape(cell_counts(results))}.",
        "",
        variants,
        "",
    ]
    notice = planted_notice(results)
    if notice is not None:
        out += [f"> [!WARNING]\n> **{md_escape(notice)}**", ""]
    out += [
        "| " + " | ".join(_TABLE_HEAD) + " |",
        "| --- | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in metric_rows(results):
        status = {"pass": "✅ pass", "fail": "❌ FAIL", "info": "info", "skipped": "not compared", "unmeasured": "not measured",
                  "undecided": "❔ UNDECIDED"}[r.status]
        cells = (r.metric, r.baseline, r.candidate, r.change, r.ci, r.threshold)
        out.append("| " + " | ".join(md_escape(c) for c in cells) + f" | {status} |")
    tasks = task_recall_rows(results)
    if len(tasks) > 1:
        out += ["", "**Recall by task**", "", "| task | family | baseline | candidate | delta |", "| --- | --- | ---: | ---: | ---: |"]
        out += ["| " + " | ".join(md_escape(c) for c in (t.task, t.family, t.baseline, t.candidate, t.delta)) + " |" for t in tasks]
    out += ["", "**Reasons**", ""]
    out += [f"- {md_escape(reason)}" for reason in d.reasons] or ["- (none recorded)"]
    files = [str(p) for p in written]
    if files:
        out += ["", "Written: " + ", ".join(md_code(f) for f in files)]
    return "\n".join(out) + "\n"


def append_step_summary(results: Sequence[tuple[GateResults, Sequence[Path]]], path: str | os.PathLike[str] | None) -> bool:
    """Append each gate's Markdown to GitHub's job summary file (`$GITHUB_STEP_SUMMARY`); False when there is none."""
    if not path or not results:
        return False
    with open(path, "a", encoding="utf-8") as handle:
        for result, written in results:
            handle.write(markdown(result, written) + "\n")
    return True


# ----------------------------------------------------------------------------- JUnit


def _junit_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(_junit_value(v) for v in value)
    return str(value)


def junit_properties(results: GateResults) -> list[tuple[str, str]]:
    """The verdict, each check and each recorded metric as flat `longctx.<gate>.…` name/value pairs."""
    prefix = f"longctx.{gate_name(results)}"
    d = results.decision
    props: list[tuple[str, str]] = [(f"{prefix}.verdict", d.verdict)]
    planted = planted_regressions(results.gate.get("candidate") or {})
    if planted:
        props.append((f"{prefix}.candidate_planted", ",".join(planted)))
    for check in d.checks:
        for key in ("value", "threshold", "comparison", "passed", "ci_low", "ci_high", "policy", "state"):
            if hasattr(check, key) and getattr(check, key) is not None:
                props.append((f"{prefix}.check.{check.name}.{key}", _junit_value(getattr(check, key))))
    for f in dataclasses.fields(results.metrics):
        value = getattr(results.metrics, f.name)
        if isinstance(value, Mapping):
            props.extend((f"{prefix}.metric.{f.name}.{k}", _junit_value(v)) for k, v in value.items() if v is not None)
        elif value is not None and not (isinstance(value, (list, tuple)) and not value):
            props.append((f"{prefix}.metric.{f.name}", _junit_value(value)))
    return props
