"""The self-contained HTML report of a gate run: prepared view data, colour scales and rendering."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .results import CellResult, GateResults, write_atomic
from .summary import (
    NA,
    VERDICT_MEANING,
    cell_counts,
    fmt_bytes,
    fmt_millis,
    fmt_number,
    fmt_seconds,
    fmt_value,
    gate_name,
    metric_rows,
    model_ref,
    other_metrics,
    variant_settings,
)

__all__ = ["fmt_bytes", "fmt_number", "render_html", "write_html"]

# Okabe-Ito blue and vermillion, a neutral grey and Tol's wine: told apart by colour-blind readers, and
# always shown next to the word they stand for.
VERDICT_COLOURS = {"approve": "#0072b2", "reject": "#c04f00", "incomplete": "#6b6b6b", "invalid": "#882255"}
# Okabe-Ito blue and orange for the two variants in the latency charts, each with its own marker shape too.
VARIANT_COLOURS = ("#0072b2", "#e69f00")

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


# ----------------------------------------------------------------------------- latency charts


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation (numpy's default), None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / target
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


@dataclass(frozen=True)
class Dot:
    x: float
    y: float
    title: str


@dataclass(frozen=True)
class Strip:
    """One variant's values at one length: dots, the quartile box, the median and the p95 mark."""

    variant: str
    colour: str
    shape: Literal["circle", "square"]
    x: int
    width: int
    dots: tuple[Dot, ...]
    q1_y: float
    q3_y: float
    median_y: float
    p95_y: float
    p95_title: str


@dataclass(frozen=True)
class LatencyChart:
    title: str
    unit: str
    width: int
    height: int
    plot_top: int
    plot_bottom: int
    plot_left: int
    plot_right: int
    ticks: tuple[AxisLabel, ...]
    groups: tuple[AxisLabel, ...]
    strips: tuple[Strip, ...]


@dataclass(frozen=True)
class LatencyRow:
    length: int
    variant: str
    cells: int
    prefill_median: str
    prefill_p95: str
    decode_median: str
    decode_p95: str


STRIP_W = 40
STRIP_GAP = 8
GROUP_GAP = 30
PLOT_LEFT = 58
PLOT_TOP = 16
PLOT_H = 170


def _timings(results: GateResults, field: str) -> dict[tuple[int, str], list[tuple[float, CellResult]]]:
    groups: dict[tuple[int, str], list[tuple[float, CellResult]]] = defaultdict(list)
    for c in results.cells:
        value = getattr(c, field, None)
        if c.error is None and value is not None:
            groups[(c.length, c.variant)].append((float(value), c))
    return groups


def latency_chart(results: GateResults, field: str, title: str, unit: str, scale: float) -> LatencyChart | None:
    """A strip plot of one timing per length and variant, with quartile box, median and p95; None without data."""
    groups = _timings(results, field)
    if not groups:
        return None
    variants = variant_names(results)
    lengths = sorted({n for n, _ in groups})
    top = max(v for values in groups.values() for v, _ in values) * scale
    step = _nice_step(top if top > 0 else 1.0)
    y_max = step * math.ceil((top if top > 0 else 1.0) / step)
    bottom = PLOT_TOP + PLOT_H

    def y_of(value: float) -> float:
        return round(bottom - value * scale / y_max * PLOT_H, 1)

    group_w = 2 * STRIP_W + STRIP_GAP
    strips, labels = [], []
    for g, length in enumerate(lengths):
        left = PLOT_LEFT + 14 + g * (group_w + GROUP_GAP)
        labels.append(AxisLabel(left + group_w // 2, bottom + 16, f"{length}"))
        for v, name in enumerate(variants):
            values = sorted(groups.get((length, name), []), key=lambda vc: vc[0])
            if not values:
                continue
            x = left + v * (STRIP_W + STRIP_GAP)
            raw = [val for val, _ in values]
            dots = tuple(
                Dot(x + STRIP_W / 2 + ((i % 5) - 2) * 5, y_of(val),
                    f"{name} · length {c.length} · depth {c.depth:.2f} · seed {c.seed}: {val * scale:.3f} {unit}")
                for i, (val, c) in enumerate(values)
            )
            p95 = percentile(raw, 95)
            assert p95 is not None
            strips.append(Strip(
                variant=name, colour=VARIANT_COLOURS[v], shape="circle" if v == 0 else "square", x=x, width=STRIP_W,
                dots=dots, q1_y=y_of(percentile(raw, 25) or 0.0), q3_y=y_of(percentile(raw, 75) or 0.0),
                median_y=y_of(percentile(raw, 50) or 0.0), p95_y=y_of(p95),
                p95_title=f"{name} · length {length}: p95 {p95 * scale:.3f} {unit} over {len(raw)} cells",
            ))
    n_ticks = int(round(y_max / step))
    ticks = tuple(AxisLabel(PLOT_LEFT - 6, int(y_of(i * step / scale)), f"{i * step:g}") for i in range(n_ticks + 1))
    right = PLOT_LEFT + 14 + len(lengths) * (group_w + GROUP_GAP) - GROUP_GAP + 14
    return LatencyChart(title=title, unit=unit, width=right + 30, height=bottom + 30, plot_top=PLOT_TOP,
                        plot_bottom=bottom, plot_left=PLOT_LEFT, plot_right=right, ticks=ticks,
                        groups=tuple(labels), strips=tuple(strips))


def latency_charts(results: GateResults) -> tuple[LatencyChart, ...]:
    charts = (
        latency_chart(results, "prefill_s", "prefill, time to first token", "s", 1.0),
        latency_chart(results, "decode_s_per_token", "decode, time per token", "ms", 1000.0),
    )
    return tuple(c for c in charts if c is not None)


def latency_rows(results: GateResults) -> tuple[LatencyRow, ...]:
    """Per length and variant: median and p95 of prefill seconds and decode milliseconds per token."""
    order = _variant_order(results)
    prefill, decode = _timings(results, "prefill_s"), _timings(results, "decode_s_per_token")
    keys = sorted(set(prefill) | set(decode), key=lambda k: (k[0], order(k[1])))

    def stat(group: list[tuple[float, CellResult]], q: float, fmt: Callable[[float | None], str]) -> str:
        return fmt(percentile([v for v, _ in group], q))

    return tuple(
        LatencyRow(
            length=length, variant=variant, cells=max(len(prefill.get((length, variant), [])), len(decode.get((length, variant), []))),
            prefill_median=stat(prefill.get((length, variant), []), 50, fmt_seconds),
            prefill_p95=stat(prefill.get((length, variant), []), 95, fmt_seconds),
            decode_median=stat(decode.get((length, variant), []), 50, fmt_millis),
            decode_p95=stat(decode.get((length, variant), []), 95, fmt_millis),
        )
        for length, variant in keys
    )


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
    order = _variant_order(results)
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


def _variant_order(results: GateResults) -> Callable[[str], tuple[int, str]]:
    known = variant_names(results)
    return lambda v: (known.index(v), v) if v in known else (len(known), v)


def _split_on(text: str, value: str) -> tuple[str, str, str]:
    """`text` around the first `value` in it, so the template can mark the needle's value; all three stay escaped."""
    at = text.find(value) if value else -1
    return (text, "", "") if at < 0 else (text[:at], value, text[at + len(value):])


def cell_rows(results: GateResults) -> tuple[CellRow, ...]:
    """Every cell, baseline first. `answer`, `excerpt` and `error` are untrusted text, left for autoescape."""
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
            needle_at=NA if c.needle_start is None else f"token {c.needle_start}",
            found="—" if c.error is not None else ("✓" if c.found else "✗"),
            failure=str(getattr(c, "failure", None) or ""),
            expected=c.expected,
            answer=c.answer,
            excerpt=_split_on(str(getattr(c, "excerpt", "") or ""), c.expected),
            prefill_s=fmt_seconds(c.prefill_s),
            decode_ms=fmt_millis(c.decode_s_per_token),
            total_s=fmt_seconds(c.total_s),
            kv_bytes=fmt_bytes(c.kv_bytes),
            error=c.error or "",
            status="error" if c.error is not None else ("found" if c.found else "missed"),
        )
        for c in cells
    )


def failure_counts(results: GateResults) -> tuple[tuple[str, int, int], ...]:
    """(failure category, baseline cells, candidate cells) over the cells that record one."""
    baseline, candidate = variant_names(results)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for c in results.cells:
        failure = getattr(c, "failure", None)
        if failure and c.variant in (baseline, candidate):
            counts[str(failure)][0 if c.variant == baseline else 1] += 1
    return tuple((k, v[0], v[1]) for k, v in sorted(counts.items()))


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


# ----------------------------------------------------------------------------- rendering


def _context(results: GateResults) -> dict[str, Any]:
    verdict = results.decision.verdict
    lo, hi = _middle_band(results.gate)
    rows = metric_rows(results)
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
        "variants": variant_settings(results),
        "metric_rows": rows,
        "other_metrics": other_metrics(results),
        "counts": cell_counts(results),
        "panels": heatmap_panels(results),
        "legends": {"recall": legend("recall"), "difference": legend("difference")},
        "middle_band": f"[{lo:.2f}, {hi:.2f}]",
        "latency_charts": latency_charts(results),
        "latency_rows": latency_rows(results),
        "variant_keys": tuple(zip(variant_names(results), VARIANT_COLOURS, ("circle", "square"))),
        "memory_rows": memory_rows(results),
        "cell_rows": cell_rows(results),
        "failure_counts": failure_counts(results),
        "errored": sum(1 for c in results.cells if c.error is not None),
        "run_rows": run_rows(results),
        "environment": environment_rows(results.environment),
        "colours": {"pass": VERDICT_COLOURS["approve"], "fail": VERDICT_COLOURS["reject"], "errored": ERRORED_FILL},
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
