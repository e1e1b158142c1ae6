"""The report's SVG charts: latency strips per length and side, and loss by position."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..gate.results import CellResult, GateResults
from .colours import VARIANT_COLOURS
from .heatmaps import AxisLabel, variant_names
from .summary import (
    fmt_millis,
    fmt_number,
    fmt_seconds,
    worst_bucket_span,
)
from .tables import variant_order

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


Marker = Literal["circle", "square"]
MARKERS: tuple[Marker, ...] = ("circle", "square")  # by side: the baseline's dots are circles, the candidate's squares


@dataclass(frozen=True)
class SideMark:
    """How a chart draws one side: its name, its colour and its marker."""

    variant: str
    colour: str
    shape: Marker


@dataclass(frozen=True)
class Strip(SideMark):
    """One variant's values at one length: dots, the quartile box, the median and the p95 mark."""

    x: int
    width: int
    dots: tuple[Dot, ...]
    q1_y: float
    q3_y: float
    median_y: float
    p95_y: float
    p95_title: str


@dataclass(frozen=True)
class PlotArea:
    """An SVG chart's size and, inside it, the box its axes frame (the templates draw both the same way)."""

    width: int
    height: int
    plot_top: int
    plot_bottom: int
    plot_left: int
    plot_right: int


@dataclass(frozen=True)
class LatencyChart(PlotArea):
    title: str
    unit: str
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
                variant=name, colour=VARIANT_COLOURS[v], shape=MARKERS[v], x=x, width=STRIP_W,
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
    order = variant_order(results)
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
class LossSeries(SideMark):
    """One side's curve: its points at bucket centres, joined by `path` (broken where a bucket has no loss)."""

    path: str
    points: tuple[Dot, ...]


@dataclass(frozen=True)
class LossChart(PlotArea):
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


def _loss_sides(results: GateResults) -> list[tuple[str, str, Marker, dict[str, Any]]]:
    """(label, colour, marker, curve) for each side that recorded a loss curve."""
    names = variant_names(results)
    return [(names[i], VARIANT_COLOURS[i], MARKERS[i], results.metrics.loss_curves[side])
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
