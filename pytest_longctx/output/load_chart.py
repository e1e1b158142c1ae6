"""The report's load sweep: p95 TTFT and goodput against concurrency for both sides (inline SVG), and the per-level table."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..gate.load import LoadLevel
from ..gate.results import GateResults
from .charts import MARKERS, Dot, LossChart, LossSeries, Marker, _nice_step
from .colours import VARIANT_COLOURS
from .heatmaps import AxisLabel, variant_names
from .summary import fmt_number, fmt_seconds

PANEL_W = 360
PANEL_H = 230
LEFT = 58
RIGHT = PANEL_W - 16
TOP = 16
BOTTOM = PANEL_H - 40


@dataclass(frozen=True)
class LoadPanel(LossChart):
    """One figure against concurrency: a line per side (the loss chart's frame, with the levels as its x ticks)."""

    title: str
    unit: str


@dataclass(frozen=True)
class LoadRow:
    concurrency: int
    variant: str
    requests: int
    errors: int
    good: int
    throughput: str
    goodput: str
    ttft_p50: str
    ttft_p95: str
    tpot_p50: str
    tpot_p95: str


def _sides(results: GateResults) -> list[tuple[str, str, Marker]]:
    names = variant_names(results)
    return [(names[i], VARIANT_COLOURS[i], MARKERS[i]) for i in range(2)]


def load_panels(results: GateResults) -> tuple[LoadPanel, ...]:
    """p95 TTFT and goodput by concurrency level, a line per side; nothing when the run recorded no load levels."""
    if not results.load_levels:
        return ()
    return tuple(panel for panel in (
        _panel(results, "ttft_p95_s", "p95 time to first token", "s"),
        _panel(results, "goodput_rps", "goodput (requests within both SLOs)", "req/s"),
    ) if panel is not None)


def _panel(results: GateResults, field: str, title: str, unit: str) -> LoadPanel | None:
    levels = sorted({level.concurrency for level in results.load_levels})
    by_side = {(lv.variant, lv.concurrency): lv for lv in results.load_levels}
    values = [v for lv in results.load_levels if (v := getattr(lv, field)) is not None and math.isfinite(v)]
    if not values:
        return None
    top = max(values)
    step = _nice_step(top if top > 0 else 1.0)
    y_max = step * max(1, math.ceil(top / step))
    span = (RIGHT - LEFT) / max(len(levels), 1)

    def x_of(i: int) -> float:
        return round(LEFT + span * (i + 0.5), 1)

    def y_of(value: float) -> float:
        return round(BOTTOM - value / y_max * (BOTTOM - TOP), 1)

    series = []
    for name, colour, shape in _sides(results):
        points = []
        for i, c in enumerate(levels):
            level = by_side.get((name, c))
            value = None if level is None else getattr(level, field)
            if value is not None and math.isfinite(value):
                points.append(Dot(x_of(i), y_of(value), f"{name} at concurrency {c}: {value:.4g} {unit}"))
        if points:
            path = " ".join(f"{'M' if j == 0 else 'L'}{p.x},{p.y}" for j, p in enumerate(points))
            series.append(LossSeries(name, colour, shape, path, tuple(points)))
    ticks = round(y_max / step)
    return LoadPanel(
        title=title, unit=unit, width=PANEL_W, height=PANEL_H, plot_top=TOP, plot_bottom=BOTTOM, plot_left=LEFT, plot_right=RIGHT,
        x_ticks=tuple(AxisLabel(round(x_of(i)), BOTTOM + 16, str(c)) for i, c in enumerate(levels)),
        y_ticks=tuple(AxisLabel(LEFT - 6, round(y_of(k * step)), f"{k * step:g}") for k in range(ticks + 1)),
        series=tuple(series), worst_x=None, worst_w=0.0, worst_title="",
    )


def load_rows(results: GateResults) -> tuple[LoadRow, ...]:
    """One row per level and side, in concurrency order."""
    def row(level: LoadLevel) -> LoadRow:
        return LoadRow(
            concurrency=level.concurrency, variant=level.variant, requests=level.requests, errors=level.errors, good=level.good,
            throughput=fmt_number(level.throughput_tok_s), goodput=fmt_number(level.goodput_rps),
            ttft_p50=fmt_seconds(level.ttft_p50_s), ttft_p95=fmt_seconds(level.ttft_p95_s),
            tpot_p50=fmt_seconds(level.tpot_p50_s), tpot_p95=fmt_seconds(level.tpot_p95_s),
        )

    return tuple(row(level) for level in sorted(results.load_levels, key=lambda lv: (lv.concurrency, lv.variant)))
