"""The self-contained HTML report of a gate run: prepared view data, colour scales and rendering."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from ..gate.results import CellResult, Failure, GateResults, write_atomic
from .planted import planted_notice
from .summary import (
    LOSS_METRIC,
    NA,
    VERDICT_MEANING,
    cell_counts,
    effective_length_recall,
    fmt_bytes,
    fmt_millis,
    fmt_number,
    fmt_seconds,
    fmt_value,
    gate_name,
    metric_rows,
    model_ref,
    other_metrics,
    setting_rows,
    task_families,
    task_recall_rows,
    variant_settings,
    worst_bucket_span,
)

__all__ = ["fmt_bytes", "fmt_number", "render_html", "write_html"]

# Okabe-Ito blue and vermillion, a neutral grey and Tol's wine: told apart by colour-blind readers, and
# always shown next to the word they stand for.
VERDICT_COLOURS = {"approve": "#0072b2", "reject": "#c04f00", "incomplete": "#6b6b6b", "invalid": "#882255", "inconclusive": "#6a4c93"}
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
    r, g, bl = (round(x + (y - x) * frac) for x, y in zip(a, b, strict=True))
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
    """One SVG heatmap, laid out: rows are depths (one row for a position-free task), columns are lengths."""

    title: str
    kind: Literal["recall", "difference", "logprob"]
    width: int
    height: int
    cell_w: int
    cell_h: int
    cells: tuple[HeatCell, ...]
    rows: tuple[AxisLabel, ...]
    cols: tuple[AxisLabel, ...]
    corner: str = "depth ↓ / length →"


@dataclass(frozen=True)
class HeatPanel:
    """One task's three grids; `positioned` is False for a family where the evidence has no position."""

    task: str
    grids: tuple[HeatGrid, ...]
    family: str = ""
    positioned: bool = True


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
    kind: Literal["recall", "difference", "logprob"],
    lengths: Sequence[int],
    depths: Sequence[float],
    middle: tuple[float, float] | None,
    cell_for: CellMaker,
) -> HeatGrid:
    """Depth rows by length columns; `middle` None lays out a position-free task: one row, no middle band."""
    cells: list[HeatCell] = []
    for r, depth in enumerate(depths):
        for col, length in enumerate(lengths):
            x, y = GRID_LEFT + col * CELL_W, GRID_TOP + r * CELL_H
            where = f"length {length} · depth {depth:.2f}" if middle is not None else f"length {length}"
            cells.append(cell_for(length, depth, where, x, y))
    rows = tuple(
        AxisLabel(GRID_LEFT - 12, GRID_TOP + r * CELL_H + CELL_H // 2, f"{d:.2f}", middle[0] <= d <= middle[1])
        if middle is not None else AxisLabel(GRID_LEFT - 12, GRID_TOP + r * CELL_H + CELL_H // 2, "all")
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
        corner="depth ↓ / length →" if middle is not None else "length →",
    )


LOGPROB_SCALE = 2.0  # nats of mean change that take the full colour


def logprob_grid(cells: Iterable[CellResult], baseline: str, candidate: str, task: str) -> dict[GridKey, list[float]]:
    """Per (length, depth): the paired changes candidate - baseline of the answer's log-probability, over seeds."""
    sides: dict[tuple[str, int, float, int], float] = {}
    for c in cells:
        if c.task == task and c.error is None and c.answer_logprob is not None and c.variant in (baseline, candidate):
            sides[(c.variant, c.length, round(c.depth, 6), c.seed)] = c.answer_logprob
    deltas: dict[GridKey, list[float]] = defaultdict(list)
    for (variant, n, d, seed), value in sides.items():
        if variant == candidate and (baseline, n, d, seed) in sides:
            deltas[(n, d)].append(value - sides[(baseline, n, d, seed)])
    return deltas


def _logprob_cell(deltas: list[float] | None, where: str, x: int, y: int) -> HeatCell:
    if not deltas:
        return HeatCell(x, y, MISSING_FILL, "#000000", "–", "", f"{where}: not measured on both sides")
    mean = sum(deltas) / len(deltas)
    fill = diverging_colour(max(-1.0, min(1.0, mean / LOGPROB_SCALE)))
    label = "0.00" if abs(mean) < 0.005 else f"{mean:+.2f}"
    return HeatCell(x, y, fill, ink_for(fill), label, f"n={len(deltas)}",
                    f"{where}: mean answer log-probability change {mean:+.3f} nats over {len(deltas)} paired cells")


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


def _task_order(results: GateResults) -> list[str]:
    """Tasks in the order the gate swept them, then any other task a cell records."""
    listed = list(task_families(results))
    recorded = {c.task for c in results.cells}
    return [t for t in listed if t in recorded] + sorted(recorded - set(listed))


def _positioned(family: str, depths: set[float]) -> bool:
    """Whether a task's evidence has a position: the family registry says; an unknown family, its cells do."""
    from ..tasks import FAMILIES

    known = FAMILIES.get(family)
    return known.uses_depth if known is not None else len(depths) > 1


# Each maker binds its task's grids when called, so a cell maker never reads a later task's loop variables.
def _recall_maker(grid: dict[GridKey, Tally], name: str) -> CellMaker:
    return lambda n, d, where, x, y: _recall_cell(grid.get((n, d)), f"{name} · {where}", x, y)


def _difference_maker(base: dict[GridKey, Tally], cand: dict[GridKey, Tally]) -> CellMaker:
    return lambda n, d, where, x, y: _difference_cell(base.get((n, d)), cand.get((n, d)), f"difference · {where}", x, y)


def _logprob_maker(likelihood: dict[GridKey, list[float]]) -> CellMaker:
    return lambda n, d, where, x, y: _logprob_cell(likelihood.get((n, d)), f"log-prob · {where}", x, y)


def heatmap_panels(results: GateResults) -> tuple[HeatPanel, ...]:
    """Per task: baseline recall, candidate recall, and candidate minus baseline, over depth x length.

    A position-free task (an aggregation family, filed under one depth) gets a single row by length.
    """
    baseline, candidate = variant_names(results)
    sweep = results.gate.get("sweep", {})
    lengths = sorted({c.length for c in results.cells} | {int(n) for n in sweep.get("lengths", ())})
    swept = {round(float(d), 6) for d in sweep.get("depths", ())}
    middle = _middle_band(results.gate)
    families = task_families(results)
    panels = []
    for task in _task_order(results):
        recorded = {round(c.depth, 6) for c in results.cells if c.task == task}
        positioned = _positioned(families.get(task, task), recorded)
        depths = sorted(recorded | swept) if positioned else sorted(recorded)
        band = middle if positioned else None
        base = recall_grid(results.cells, baseline, task)
        cand = recall_grid(results.cells, candidate, task)

        grids: tuple[HeatGrid, ...] = (
            _grid(f"{baseline} recall", "recall", lengths, depths, band, _recall_maker(base, baseline)),
            _grid(f"{candidate} recall", "recall", lengths, depths, band, _recall_maker(cand, candidate)),
            _grid(f"difference ({candidate} − {baseline})", "difference", lengths, depths, band,
                  _difference_maker(base, cand)),
        )
        likelihood = logprob_grid(results.cells, baseline, candidate, task)
        if likelihood:  # beside the recall grids: the change recall cannot show at a ceiling or floor
            grids += (_grid(f"answer log-prob change ({candidate} − {baseline}), nats", "logprob", lengths, depths, band,
                            _logprob_maker(likelihood)),)
        panels.append(HeatPanel(task=task, grids=grids, family=families.get(task, task), positioned=positioned))
    return tuple(panels)


def legend(kind: Literal["recall", "difference", "logprob"]) -> tuple[tuple[str, str, str], ...]:
    """Swatches (label, fill, ink) explaining a grid's colour scale."""
    if kind == "logprob":
        points = [(f"{v:+.1f}" if v else "0.0", diverging_colour(v / LOGPROB_SCALE)) for v in (-2.0, -1.0, 0.0, 1.0, 2.0)]
    elif kind == "recall":
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


# ----------------------------------------------------------------------------- loss by position


@dataclass(frozen=True)
class LossSeries:
    """One side's curve: its points at bucket centres, joined by `path` (broken where a bucket has no loss)."""

    variant: str
    colour: str
    shape: Literal["circle", "square"]
    path: str
    points: tuple[Dot, ...]


@dataclass(frozen=True)
class LossChart:
    width: int
    height: int
    plot_top: int
    plot_bottom: int
    plot_left: int
    plot_right: int
    x_ticks: tuple[AxisLabel, ...]
    y_ticks: tuple[AxisLabel, ...]
    series: tuple[LossSeries, ...]
    worst_x: float | None  # the worst bucket's band, when the run recorded one
    worst_w: float
    worst_title: str


@dataclass(frozen=True)
class LossRow:
    positions: str
    baseline: str
    candidate: str
    ratio: str
    worst: bool


LOSS_W = 640
LOSS_H = 250
LOSS_LEFT = 58
LOSS_RIGHT = LOSS_W - 20
LOSS_TOP = 24
LOSS_BOTTOM = LOSS_H - 40


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _loss_sides(results: GateResults) -> list[tuple[str, str, Literal["circle", "square"], dict[str, Any]]]:
    """(label, colour, marker, curve) for each side that recorded a loss curve."""
    names = variant_names(results)
    shapes: tuple[Literal["circle", "square"], ...] = ("circle", "square")
    return [(names[i], VARIANT_COLOURS[i], shapes[i], results.metrics.loss_curves[side])
            for i, side in enumerate(("baseline", "candidate")) if side in results.metrics.loss_curves]


def loss_chart(results: GateResults) -> LossChart | None:
    """Mean next-token loss per position bucket, a line per side, the worst bucket shaded; None without curves."""
    sides = [side for side in _loss_sides(results) if len(side[3].get("edges") or ()) >= 2]
    values = [v for _, _, _, c in sides for v in c.get("losses", ()) if _finite(v)]
    if not values:
        return None
    end = max(int(c["edges"][-1]) for _, _, _, c in sides)
    lo, hi = min(values), max(values)
    step = _nice_step(hi - lo if hi > lo else max(abs(hi), 1.0) / 5)
    y_min, y_max = step * math.floor(lo / step), step * math.ceil(hi / step)
    if y_max <= y_min:
        y_max = y_min + step

    def x_of(position: float) -> float:
        return round(LOSS_LEFT + position / end * (LOSS_RIGHT - LOSS_LEFT), 1)

    def y_of(loss: float) -> float:
        return round(LOSS_BOTTOM - (loss - y_min) / (y_max - y_min) * (LOSS_BOTTOM - LOSS_TOP), 1)

    series = []
    for name, colour, shape, curve in sides:
        edges, losses, counts = curve.get("edges", ()), curve.get("losses", ()), curve.get("counts", ())
        points, path, pen_down = [], [], False
        for i, loss in enumerate(losses):
            if i + 1 >= len(edges) or not _finite(loss):
                pen_down = False
                continue
            x, y = x_of((edges[i] + edges[i + 1]) / 2), y_of(loss)
            count = f" over {counts[i]} predictions" if i < len(counts) else ""
            points.append(Dot(x, y, f"{name} · positions {edges[i]}-{edges[i + 1]}: mean loss {loss:.3f} nats{count}"))
            path.append(f"{'L' if pen_down else 'M'}{x} {y}")
            pen_down = True
        series.append(LossSeries(name, colour, shape, " ".join(path), tuple(points)))
    edges = sides[0][3]["edges"]
    every = max(1, math.ceil((len(edges) - 1) / 8))
    x_ticks = tuple(AxisLabel(int(x_of(e)), LOSS_BOTTOM + 16, str(e)) for i, e in enumerate(edges) if i % every == 0 or i == len(edges) - 1)
    y_ticks = tuple(AxisLabel(LOSS_LEFT - 6, int(y_of(y_min + i * step)), f"{y_min + i * step:g}")
                    for i in range(int(round((y_max - y_min) / step)) + 1))
    span = worst_bucket_span(results)
    ratio = results.metrics.loss_ratio
    worst_title = "" if span is None else (f"worst bucket, positions {span[0]}-{span[1]}: candidate/baseline loss "
                                           f"{fmt_number(ratio)}")
    return LossChart(
        width=LOSS_W, height=LOSS_H, plot_top=LOSS_TOP, plot_bottom=LOSS_BOTTOM, plot_left=LOSS_LEFT, plot_right=LOSS_RIGHT,
        x_ticks=x_ticks, y_ticks=y_ticks, series=tuple(series),
        worst_x=None if span is None else x_of(span[0]), worst_w=0.0 if span is None else x_of(span[1]) - x_of(span[0]),
        worst_title=worst_title,
    )


def loss_rows(results: GateResults) -> tuple[LossRow, ...]:
    """Per bucket: both sides' mean loss and the candidate/baseline ratio; the worst bucket flagged."""
    curves = results.metrics.loss_curves
    base, cand = curves.get("baseline", {}), curves.get("candidate", {})
    edges = base.get("edges") or cand.get("edges") or []

    def at(curve: dict[str, Any], i: int) -> float | None:
        losses = curve.get("losses") or []
        return losses[i] if i < len(losses) and _finite(losses[i]) else None

    rows = []
    for i in range(len(edges) - 1):
        b, c = at(base, i), at(cand, i)
        rows.append(LossRow(f"{edges[i]}-{edges[i + 1]}", fmt_number(b), fmt_number(c),
                            fmt_number(None if b is None or c is None or b == 0 else c / b), i == results.metrics.loss_worst_bucket))
    return tuple(rows)


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
    timed_runs: tuple[str, ...] = ()  # "3 timed runs: 1.210 / 1.190 / 1.250 s, min used", then prefill and decode
    reused: str = ""  # set when the recall run took part of its prompt's K/V from a cache (so it was not timed)


def _variant_order(results: GateResults) -> Callable[[str], tuple[int, str]]:
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
    order = _variant_order(results)
    tasks = _task_order(results)
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
    tasks = _task_order(results)
    rows = []
    for category in order:
        per_task = counts[category]
        where = " · ".join(f"{t} {per_task[t][0]}/{per_task[t][1]}" for t in tasks if t in per_task)
        rows.append(FailureRow(category, sum(v[0] for v in per_task.values()), sum(v[1] for v in per_task.values()),
                               where if len(tasks) > 1 else ""))
    return tuple(rows)


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


# ----------------------------------------------------------------------------- rendering


def _context(results: GateResults) -> dict[str, Any]:
    verdict = results.decision.verdict
    lo, hi = _middle_band(results.gate)
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
