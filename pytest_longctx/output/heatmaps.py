"""The report's heatmaps: per task, each side's recall, their difference and the answer log-probability change, by depth and length."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..gate.results import CellResult, GateResults
from .colours import ERRORED_FILL, MISSING_FILL, diverging_colour, ink_for, sequential_colour
from .summary import (
    task_families,
)

CELL_W = 64
CELL_H = 40
GRID_LEFT = 64
GRID_TOP = 40

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
    cells: tuple[HeatCell, ...]
    rows: tuple[AxisLabel, ...]
    cols: tuple[AxisLabel, ...]
    corner: str = "depth ↓ / length →"
    cell_w: ClassVar[int] = CELL_W  # every grid's cells are the same size
    cell_h: ClassVar[int] = CELL_H


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


def middle_band(gate: dict[str, Any]) -> tuple[float, float]:
    lo, hi = gate.get("sweep", {}).get("middle", (0.25, 0.75))
    return float(lo), float(hi)


def variant_names(results: GateResults) -> tuple[str, str]:
    """The baseline's and the candidate's names as the cells record them."""
    gate = results.gate
    return (
        str(gate.get("baseline", {}).get("name", "baseline")),
        str(gate.get("candidate", {}).get("name", "candidate")),
    )


def task_order(results: GateResults) -> list[str]:
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
    middle = middle_band(results.gate)
    families = task_families(results)
    panels = []
    for task in task_order(results):
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
