"""The self-contained HTML report of a gate run: prepared view data, colour scales and rendering."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pytest_longctx.results import CellResult, Check, GateResults, Metrics, write_atomic

NA = "n/a"

# Okabe-Ito blue and vermillion, and a neutral grey: told apart by colour-blind readers, and always
# shown next to the word they stand for.
VERDICT_COLOURS = {"approve": "#0072b2", "reject": "#c04f00", "incomplete": "#6b6b6b"}

# Viridis at five stops: perceptually uniform and readable with any colour-vision deficiency.
_SEQUENTIAL = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")
# Orange (candidate worse) through near-white to blue (candidate better).
_DIVERGING = ("#b35806", "#f1a340", "#f7f7f7", "#67a9cf", "#2166ac")
ERRORED_FILL = "#bdbdbd"
MISSING_FILL = "#ffffff"

CELL_W = 64
CELL_H = 40
GRID_LEFT = 64
GRID_TOP = 40


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


def fmt_threshold(check: Check) -> str:
    """">= 0.00", "<= 1.10"; more decimals only when the threshold has them."""
    t = check.threshold
    text = f"{t:.2f}" if round(t, 2) == t else f"{t:g}"
    return f"{check.comparison} {text}"


def fmt_seconds(value: float | None, *, scale: float = 1.0, digits: int = 3) -> str:
    return NA if value is None else f"{value * scale:.{digits}f}"


def fmt_value(value: Any) -> str:
    """An environment value: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


# ----------------------------------------------------------------------------- colour scales


def _hex_to_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _interpolate(stops: Sequence[str], t: float) -> str:
    t = min(1.0, max(0.0, t))
    pos = t * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    frac = pos - i
    a, b = _hex_to_rgb(stops[i]), _hex_to_rgb(stops[i + 1])
    r, g, bl = (round(x + (y - x) * frac) for x, y in zip(a, b))
    return f"#{r:02x}{g:02x}{bl:02x}"


def sequential_colour(value: float) -> str:
    """Fill for a recall in [0, 1] on the viridis scale (0 dark purple, 1 yellow)."""
    return _interpolate(_SEQUENTIAL, value)


def diverging_colour(delta: float) -> str:
    """Fill for a recall difference in [-1, 1]: orange below zero, blue above, near-white at zero."""
    return _interpolate(_DIVERGING, (delta + 1.0) / 2.0)


def ink_for(fill: str) -> str:
    """Black or white text, whichever reads better on `fill` (relative luminance)."""

    def channel(c: int) -> float:
        s = c / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in _hex_to_rgb(fill))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#000000" if luminance > 0.179 else "#ffffff"


# ----------------------------------------------------------------------------- recall grids


@dataclass(frozen=True)
class Tally:
    """Cells of one variant at one (length, depth), over seeds: found, measured (error-free), errored."""

    found: int = 0
    measured: int = 0
    errored: int = 0

    @property
    def recall(self) -> float | None:
        return self.found / self.measured if self.measured else None

    @property
    def all_errored(self) -> bool:
        return self.errored > 0 and self.measured == 0


GridKey = tuple[int, float]
# (length, depth, "length n · depth d", x, y) -> the laid-out cell
CellMaker = Callable[[int, float, str, int, int], "HeatCell"]


def recall_grid(cells: Iterable[CellResult], variant: str, task: str) -> dict[GridKey, Tally]:
    """Tally `variant`'s cells of `task` by (length, depth); errored cells never count as measured."""
    counts: dict[GridKey, list[int]] = defaultdict(lambda: [0, 0, 0])
    for c in cells:
        if c.variant != variant or c.task != task:
            continue
        slot = counts[(c.length, round(c.depth, 6))]
        if c.error is not None:
            slot[2] += 1
        else:
            slot[1] += 1
            slot[0] += int(c.found)
    return {k: Tally(found=v[0], measured=v[1], errored=v[2]) for k, v in counts.items()}


@dataclass(frozen=True)
class HeatCell:
    x: int
    y: int
    fill: str
    ink: str
    label: str
    sublabel: str
    title: str


@dataclass(frozen=True)
class AxisLabel:
    x: int
    y: int
    text: str
    middle: bool = False


@dataclass(frozen=True)
class HeatGrid:
    """One SVG heatmap, laid out: rows are depths, columns are lengths."""

    title: str
    kind: Literal["recall", "difference"]
    width: int
    height: int
    cell_w: int
    cell_h: int
    cells: tuple[HeatCell, ...]
    rows: tuple[AxisLabel, ...]
    cols: tuple[AxisLabel, ...]


@dataclass(frozen=True)
class HeatPanel:
    task: str
    grids: tuple[HeatGrid, ...]


def _recall_cell(tally: Tally | None, where: str, x: int, y: int) -> HeatCell:
    if tally is None:
        return HeatCell(x, y, MISSING_FILL, "#000000", "–", "", f"{where}: no cells")
    if tally.all_errored:
        return HeatCell(x, y, ERRORED_FILL, "#000000", "err", "", f"{where}: all {tally.errored} cells errored")
    recall = tally.recall
    assert recall is not None
    fill = sequential_colour(recall)
    errored = f", {tally.errored} errored" if tally.errored else ""
    return HeatCell(
        x, y, fill, ink_for(fill), f"{recall:.2f}", f"{tally.found}/{tally.measured}",
        f"{where}: {tally.found}/{tally.measured} found ({recall:.2f}){errored}",
    )


def _difference_cell(base: Tally | None, cand: Tally | None, where: str, x: int, y: int) -> HeatCell:
    if base is None or cand is None:
        return HeatCell(x, y, MISSING_FILL, "#000000", "–", "", f"{where}: no cells to compare")
    if base.recall is None or cand.recall is None:
        return HeatCell(x, y, ERRORED_FILL, "#000000", "err", "", f"{where}: a variant has only errored cells")
    delta = cand.recall - base.recall
    fill = diverging_colour(delta)
    label = "0.00" if abs(delta) < 0.005 else f"{delta:+.2f}"
    return HeatCell(
        x, y, fill, ink_for(fill), label, "",
        f"{where}: candidate {cand.recall:.2f} - baseline {base.recall:.2f} = {label}",
    )


def _grid(
    title: str,
    kind: Literal["recall", "difference"],
    lengths: Sequence[int],
    depths: Sequence[float],
    middle: tuple[float, float],
    cell_for: CellMaker,
) -> HeatGrid:
    cells: list[HeatCell] = []
    for r, depth in enumerate(depths):
        for col, length in enumerate(lengths):
            x, y = GRID_LEFT + col * CELL_W, GRID_TOP + r * CELL_H
            cells.append(cell_for(length, depth, f"length {length} · depth {depth:.2f}", x, y))
    rows = tuple(
        AxisLabel(GRID_LEFT - 12, GRID_TOP + r * CELL_H + CELL_H // 2, f"{d:.2f}", middle[0] <= d <= middle[1])
        for r, d in enumerate(depths)
    )
    cols = tuple(AxisLabel(GRID_LEFT + c * CELL_W + CELL_W // 2, GRID_TOP - 8, str(n)) for c, n in enumerate(lengths))
    return HeatGrid(
        title=title,
        kind=kind,
        width=GRID_LEFT + len(lengths) * CELL_W + 4,
        height=GRID_TOP + len(depths) * CELL_H + 4,
        cell_w=CELL_W,
        cell_h=CELL_H,
        cells=tuple(cells),
        rows=rows,
        cols=cols,
    )


def _middle_band(gate: dict[str, Any]) -> tuple[float, float]:
    lo, hi = gate.get("sweep", {}).get("middle", (0.25, 0.75))
    return float(lo), float(hi)


def variant_names(results: GateResults) -> tuple[str, str]:
    """The baseline's and the candidate's names as the cells record them."""
    gate = results.gate
    return (
        str(gate.get("baseline", {}).get("name", "baseline")),
        str(gate.get("candidate", {}).get("name", "candidate")),
    )


def heatmap_panels(results: GateResults) -> tuple[HeatPanel, ...]:
    """Per task: baseline recall, candidate recall, and candidate minus baseline, over depth x length."""
    baseline, candidate = variant_names(results)
    sweep = results.gate.get("sweep", {})
    lengths = sorted({c.length for c in results.cells} | {int(n) for n in sweep.get("lengths", ())})
    depths = sorted({round(c.depth, 6) for c in results.cells} | {round(float(d), 6) for d in sweep.get("depths", ())})
    middle = _middle_band(results.gate)
    tasks = sorted({c.task for c in results.cells})
    panels = []
    for task in tasks:
        base = recall_grid(results.cells, baseline, task)
        cand = recall_grid(results.cells, candidate, task)

        def recall_cell(grid: dict[GridKey, Tally], name: str) -> CellMaker:
            return lambda n, d, where, x, y: _recall_cell(grid.get((n, d)), f"{name} · {where}", x, y)

        grids = (
            _grid(f"{baseline} recall", "recall", lengths, depths, middle, recall_cell(base, baseline)),
            _grid(f"{candidate} recall", "recall", lengths, depths, middle, recall_cell(cand, candidate)),
            _grid(
                f"difference ({candidate} − {baseline})", "difference", lengths, depths, middle,
                lambda n, d, where, x, y: _difference_cell(base.get((n, d)), cand.get((n, d)), f"difference · {where}", x, y),
            ),
        )
        panels.append(HeatPanel(task=task, grids=grids))
    return tuple(panels)


def legend(kind: Literal["recall", "difference"]) -> tuple[tuple[str, str, str], ...]:
    """Swatches (label, fill, ink) explaining a grid's colour scale."""
    if kind == "recall":
        points = [(f"{v:.2f}", sequential_colour(v)) for v in (0.0, 0.25, 0.5, 0.75, 1.0)]
    else:
        points = [(f"{v:+.2f}" if v else "0.00", diverging_colour(v)) for v in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    return tuple((label, fill, ink_for(fill)) for label, fill in points)


# ----------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class MetricRow:
    metric: str
    baseline: str
    candidate: str
    change: str
    threshold: str
    status: Literal["pass", "fail", "info"]
    detail: str


def _check_for(checks: Sequence[Check], *keywords: str) -> Check | None:
    return next((c for c in checks if all(k in c.name for k in keywords)), None)


def metric_rows(results: GateResults) -> tuple[MetricRow, ...]:
    """The approval rule's numbers: each metric with both variants, its ratio or delta, and its check."""
    m: Metrics = results.metrics
    checks = results.decision.checks
    baseline, candidate = "baseline", "candidate"

    def delta(values: dict[str, float | None]) -> float | None:
        b, c = values.get(baseline), values.get(candidate)
        return None if b is None or c is None else c - b

    specs: list[tuple[str, dict[str, float | None], Callable[[float | None], str], float | None, Check | None, str]] = [
        ("middle-band recall", m.middle_recall, fmt_number, delta(m.middle_recall), _check_for(checks, "recall"), "delta"),
        ("recall, all depths", m.recall, fmt_number, delta(m.recall), None, "delta"),
        ("p95 latency (s)", m.p95_latency_s, fmt_seconds, m.p95_latency_ratio, _check_for(checks, "latency"), "ratio"),
        (f"memory ({m.memory_source})", m.memory_bytes, fmt_bytes, m.memory_ratio, _check_for(checks, "memory"), "ratio"),
    ]
    rows = []
    used: set[str] = set()
    for label, values, fmt, computed, check, how in specs:
        value = check.value if check is not None else computed
        change = fmt_number(value, signed=how == "delta")
        rows.append(
            MetricRow(
                metric=label,
                baseline=fmt(values.get(baseline)),
                candidate=fmt(values.get(candidate)),
                change=change if value is None else f"{change} ({how})",
                threshold=fmt_threshold(check) if check is not None else "—",
                status="info" if check is None else ("pass" if check.passed else "fail"),
                detail=check.detail if check is not None else "not part of the rule",
            )
        )
        if check is not None:
            used.add(check.name)
    for check in checks:  # checks this report does not know how to pair with a metric
        if check.name in used:
            continue
        rows.append(
            MetricRow(check.name, "—", "—", fmt_number(check.value), fmt_threshold(check),
                      "pass" if check.passed else "fail", check.detail)
        )
    return tuple(rows)


@dataclass(frozen=True)
class MemoryRow:
    length: int
    variant: str
    kv: str
    kv_analytic: str
    peak: str
    cells: int


def _mean(values: Iterable[int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def memory_rows(results: GateResults) -> tuple[MemoryRow, ...]:
    """Per length and variant: mean measured KV bytes, mean analytic KV bytes, mean peak bytes."""
    order = _variant_order(results)
    groups: dict[tuple[int, str], list[CellResult]] = defaultdict(list)
    for c in results.cells:
        groups[(c.length, c.variant)].append(c)
    return tuple(
        MemoryRow(
            length=length,
            variant=variant,
            kv=fmt_bytes(_mean(c.kv_bytes for c in group)),
            kv_analytic=fmt_bytes(_mean(c.kv_bytes_analytic for c in group)),
            peak=fmt_bytes(_mean(c.peak_bytes for c in group)),
            cells=len(group),
        )
        for (length, variant), group in sorted(groups.items(), key=lambda kv: (kv[0][0], order(kv[0][1])))
    )


@dataclass(frozen=True)
class CellRow:
    variant: str
    task: str
    length: int
    tokens: int
    depth: str
    seed: int
    found: str
    expected: str
    answer: str
    prefill_s: str
    decode_ms: str
    total_s: str
    kv_bytes: str
    error: str
    status: Literal["found", "missed", "error"]


def _variant_order(results: GateResults) -> Callable[[str], tuple[int, str]]:
    known = variant_names(results)
    return lambda v: (known.index(v), v) if v in known else (len(known), v)


def cell_rows(results: GateResults) -> tuple[CellRow, ...]:
    """Every cell, baseline first; `answer` and `error` are model/backend output, left for autoescape."""
    order = _variant_order(results)
    cells = sorted(results.cells, key=lambda c: (order(c.variant), c.task, c.length, c.depth, c.seed))
    return tuple(
        CellRow(
            variant=c.variant,
            task=c.task,
            length=c.length,
            tokens=c.tokens,
            depth=f"{c.depth:.2f}",
            seed=c.seed,
            found="—" if c.error is not None else ("✓" if c.found else "✗"),
            expected=c.expected,
            answer=c.answer,
            prefill_s=fmt_seconds(c.prefill_s),
            decode_ms=fmt_seconds(c.decode_s_per_token, scale=1000.0, digits=2),
            total_s=fmt_seconds(c.total_s),
            kv_bytes=fmt_bytes(c.kv_bytes),
            error=c.error or "",
            status="error" if c.error is not None else ("found" if c.found else "missed"),
        )
        for c in cells
    )


def variant_settings(results: GateResults) -> tuple[tuple[str, str], ...]:
    """(name, "kv_cache_dtype=fp8, kv_scale=token_head") for the baseline and the candidate."""
    rows = []
    for role in ("baseline", "candidate"):
        spec = results.gate.get(role, {})
        settings = ", ".join(f"{k}={fmt_value(v)}" for k, v in spec.items() if k != "name")
        rows.append((str(spec.get("name", role)), settings or "defaults"))
    return tuple(rows)


def run_rows(results: GateResults) -> tuple[tuple[str, str], ...]:
    """Gate identity and run totals, then the recorded environment, as key/value pairs."""
    m = results.metrics
    rows = [
        ("gate file", fmt_value(results.gate.get("path")) if results.gate.get("path") else NA),
        ("gate sha256", str(results.gate.get("sha256") or NA)),
        ("wall time (s)", fmt_seconds(results.wall_s, digits=1)),
        ("cells", f"{m.paired_cells} paired, {m.middle_cells} middle-band, {m.expected_cells} expected, "
                  f"{m.errored_cells} errored, {m.missing_cells} missing"),
        ("schema version", str(results.schema_version)),
    ]
    return tuple(rows)


# ----------------------------------------------------------------------------- rendering


def _context(results: GateResults) -> dict[str, Any]:
    gate = results.gate
    model = gate.get("model", {})
    verdict = results.decision.verdict
    lo, hi = _middle_band(gate)
    return {
        "gate_name": str(gate.get("name", "unnamed gate")),
        "model_ref": str(model.get("ref", NA) if isinstance(model, dict) else model),
        "verdict": verdict,
        "verdict_colour": VERDICT_COLOURS.get(verdict, VERDICT_COLOURS["incomplete"]),
        "reasons": results.decision.reasons,
        "variants": variant_settings(results),
        "metric_rows": metric_rows(results),
        "panels": heatmap_panels(results),
        "legends": {"recall": legend("recall"), "difference": legend("difference")},
        "middle_band": f"[{lo:.2f}, {hi:.2f}]",
        "memory_rows": memory_rows(results),
        "cell_rows": cell_rows(results),
        "errored": sum(1 for c in results.cells if c.error is not None),
        "run_rows": run_rows(results),
        "environment": tuple((str(k), fmt_value(v)) for k, v in results.environment.items()),
        "colours": {"pass": VERDICT_COLOURS["approve"], "fail": VERDICT_COLOURS["reject"], "errored": ERRORED_FILL},
    }


def render_html(results: GateResults) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no scripts, no external assets).

    Args:
        results: a finished (or incomplete) gate run.

    Returns:
        The page's text; every string from the model or the environment is HTML-escaped.
    """
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pytest_longctx", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(**_context(results))


def write_html(results: GateResults, path: Path) -> None:
    """Render the report and write it to `path` atomically."""
    write_atomic(Path(path), render_html(results))
