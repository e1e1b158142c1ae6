"""The self-contained HTML report of a gate run: the page's context, gathered from heatmaps, charts and tables, and its rendering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..gate.results import GateResults, write_atomic
from .charts import latency_charts, latency_rows, loss_chart, loss_rows
from .colours import ERRORED_FILL, VARIANT_COLOURS, VERDICT_COLOURS
from .heatmaps import heatmap_panels, legend, middle_band, variant_names
from .load_chart import load_panels, load_rows
from .planted import planted_notice
from .settings import setting_rows, variant_settings
from .summary import (
    LOSS_METRIC,
    VERDICT_MEANING,
    cell_counts,
    fmt_bytes,
    fmt_number,
    gate_name,
    metric_rows,
    model_ref,
    other_metrics,
    task_recall_rows,
)
from .tables import (
    cell_rows,
    effective_length_note,
    environment_rows,
    failure_rows,
    length_rows,
    memory_rows,
    repeat_note,
    run_rows,
)

__all__ = ["fmt_bytes", "fmt_number", "render_html", "write_html"]
# ----------------------------------------------------------------------------- rendering


def _context(results: GateResults) -> dict[str, Any]:
    verdict = results.decision.verdict
    lo, hi = middle_band(results.gate)
    rows = metric_rows(results)
    cells = cell_rows(results)
    failed = sum(1 for r in rows if r.status == "fail")
    judged = sum(1 for r in rows if r.status in ("pass", "fail"))
    return {
        "gate_name": gate_name(results),
        "model_ref": model_ref(results),
        "verdict": verdict,
        "verdict_colour": VERDICT_COLOURS.get(verdict, VERDICT_COLOURS["incomplete"]),
        "meaning": VERDICT_MEANING.get(verdict, verdict),
        "tally": f"{judged - failed} of {judged} thresholds met" if judged else "no threshold could be evaluated",
        "reasons": results.decision.reasons,
        "planted_notice": planted_notice(results),
        "variants": variant_settings(results),
        "setting_rows": setting_rows(results),
        "task_rows": task_recall_rows(results),
        "length_rows": length_rows(results),
        "effective_note": effective_length_note(results),
        "failure_rows": failure_rows(results),
        "loss_chart": loss_chart(results),
        "loss_rows": loss_rows(results),
        "loss_check": next((r for r in rows if r.metric == LOSS_METRIC), None),
        "metric_rows": rows,
        "other_metrics": other_metrics(results),
        "counts": cell_counts(results),
        "panels": heatmap_panels(results),
        "legends": {"recall": legend("recall"), "difference": legend("difference"), "logprob": legend("logprob")},
        "any_logprob": any(c.answer_logprob is not None for c in results.cells),
        "middle_band": f"[{lo:.2f}, {hi:.2f}]",
        "latency_charts": latency_charts(results),
        "latency_rows": latency_rows(results),
        "repeat_note": repeat_note(results),
        "variant_keys": tuple(zip(variant_names(results), VARIANT_COLOURS, ("circle", "square"), strict=True)),
        "memory_rows": memory_rows(results),
        "load_panels": load_panels(results),
        "load_rows": load_rows(results),
        "load_note": results.metrics.load_note,
        "load_requests": (results.gate.get("sweep", {}).get("load") or {}).get("requests"),
        "cell_rows": cells,
        "show_runs": any(c.timed_runs or c.reused for c in cells),  # older results record no timed runs
        "errored": sum(1 for c in results.cells if c.error is not None),
        "run_rows": run_rows(results),
        "environment": environment_rows(results.environment),
        "colours": {"pass": VERDICT_COLOURS["approve"], "fail": VERDICT_COLOURS["reject"], "errored": ERRORED_FILL,
                    "undecided": VERDICT_COLOURS["inconclusive"]},
    }


def render_html(results: GateResults) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no scripts, no external assets).

    Args:
        results: a finished (or incomplete) gate run; fields missing from older results files are left out.

    Returns:
        The page's text; every string from the model, the prompt or the environment is HTML-escaped, and the
        page's Content-Security-Policy forbids scripts besides.
    """
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pytest_longctx.output", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(**_context(results))


def write_html(results: GateResults, path: Path) -> None:
    """Render the report and write it to `path` atomically."""
    write_atomic(Path(path), render_html(results))
