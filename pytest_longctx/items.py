"""pytest nodes for a gate: one collector per gate and variant, one item per cell of each variant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from .gate.spec import VariantSpec
from .gate.sweep import Cell, interleaved

if TYPE_CHECKING:
    from .gate.run import GateRun

CELL_PROPERTY = "longctx_cell"
TIMING_PROPERTY = "longctx_timing"
LOSS_PROPERTY = "longctx_loss"
LOAD_PROPERTY = "longctx_load"


class GateNode(pytest.Collector):
    """The gate itself; its node id is the gate's name, so cell ids read `fp8-kv-cache::candidate::niah[...]`."""

    run: GateRun

    def collect(self) -> Iterator[pytest.Item]:
        variants = {v.name: VariantNode.from_parent(self, name=v.name) for v in self.run.variants}
        sequential = self.run.gate.sweep.sequential
        if sequential is not None:
            yield from self._loss_items(variants)
            # One look after the other: its recall runs, then its timing passes; GateRun evaluates the looks so
            # far when the next one starts, and skips it once the verdict is decided.
            for look in range(1, sequential.planned_looks + 1):
                yield from self._cell_items(variants, look)
                for number in self.run.timing_passes:
                    yield TimingPassItem.from_parent(self, name=f"timing-pass-{number}-look-{look}", run=self.run, number=number, look=look)
            yield from self._load_items(variants)
            return
        yield from self._cell_items(variants, None)
        yield from self._loss_items(variants)
        # Timed runs come after every recall run, in passes over the whole sweep (see GateRun.timing_pass).
        for number in self.run.timing_passes:
            yield TimingPassItem.from_parent(self, name=f"timing-pass-{number}", run=self.run, number=number)
        yield from self._load_items(variants)

    def _load_items(self, variants: dict[str, VariantNode]) -> Iterator[pytest.Item]:
        """The load sweep last, so its queues cannot slow the timed cells; levels in ABBA order across the sides."""
        load = self.run.gate.sweep.load
        # A captured baseline has no load levels, and load figures do not transfer between runs: nothing to compare.
        if load is not None and not self.run.capture and self.run.gate.captured_baseline is None:
            for variant, level in load.order(self.run.variants):
                yield LoadItem.from_parent(variants[variant.name], name=f"load[c{level}]", run=self.run, variant=variant, level=level)

    def _cell_items(self, variants: dict[str, VariantNode], look: int | None) -> Iterator[pytest.Item]:
        sequential = self.run.gate.sweep.sequential
        for variant, cell in interleaved(self.run.gate):
            if variant.name in variants and (look is None or sequential is None or sequential.look_of(cell.seed) == look):
                yield CellItem.from_parent(variants[variant.name], name=cell.id, run=self.run, variant=variant, cell=cell)

    def _loss_items(self, variants: dict[str, VariantNode]) -> Iterator[pytest.Item]:
        if self.run.gate.sweep.loss is not None:
            for variant in self.run.variants:
                yield LossItem.from_parent(variants[variant.name], name=f"loss[{self.run.gate.sweep.loss.tokens}]",
                                           run=self.run, variant=variant)


class VariantNode(pytest.Collector):
    def collect(self) -> Iterator[pytest.Item]:
        return iter(())  # the gate node creates the items, interleaved across variants


class _GateItem(pytest.Item):
    """An item of a gate run, for one side (`variant`) or both (None); it fails when what it runs raised CellFailed."""

    failure = "{nodeid} failed: {error}"  # how repr_failure words a CellFailed

    def __init__(self, *, run: GateRun, variant: VariantSpec | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run = run
        self.variant = variant

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, CellFailed):
            return self.failure.format(nodeid=self.nodeid, error=excinfo.value)
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Any, int | None, str]:
        side = "" if self.variant is None else f"{self.variant.name}::"
        return self.path, None, f"{self.run.gate.name}::{side}{self.name}"


class CellItem(_GateItem):
    """One measurement. A miss is data; the item fails only when the cell could not be measured."""

    failure = "cell {nodeid} could not be measured: {error}"
    variant: VariantSpec

    def __init__(self, *, run: GateRun, variant: VariantSpec, cell: Cell, **kwargs: Any) -> None:
        super().__init__(run=run, variant=variant, **kwargs)
        self.cell = cell  # the item's name is the cell's id

    def runtest(self) -> None:
        sequential = self.run.gate.sweep.sequential
        reason = None if sequential is None else self.run.stop_reason(sequential.look_of(self.cell.seed))
        if reason is not None:
            pytest.skip(reason)
        result = self.run.measure(self.variant, self.cell)
        # Results travel on the report, so a controller (e.g. under xdist) sees every worker's cells.
        self.user_properties.append((CELL_PROPERTY, result.to_dict()))
        if result.error is not None:
            raise CellFailed(result.error)


class LossItem(_GateItem):
    """One side's next-token loss by position over the gate's long text."""

    variant: VariantSpec

    def runtest(self) -> None:
        self.user_properties.append((LOSS_PROPERTY, self.run.loss_curve(self.variant)))


class LoadItem(_GateItem):
    """One side at one concurrency level of the load sweep; it fails when any of its requests failed."""

    failure = "load level {nodeid}: {error}"
    variant: VariantSpec

    def __init__(self, *, run: GateRun, variant: VariantSpec, level: int, **kwargs: Any) -> None:
        super().__init__(run=run, variant=variant, **kwargs)
        self.level = level

    def runtest(self) -> None:
        from .gate.load import applies

        reason = applies(self.run.gate.variants)
        if reason is not None:
            pytest.skip(reason)
        level = self.run.load_level(self.variant, self.level)
        self.user_properties.append((LOAD_PROPERTY, level.to_dict()))
        if level.errors:
            raise CellFailed(f"{level.errors} of {level.requests} requests failed: {'; '.join(level.error_samples)}")


class TimingPassItem(_GateItem):
    """One pass of full, uncached timed runs over the sweep; it fails when any of its runs failed."""

    failure = "timed runs of {nodeid} failed: {error}"

    def __init__(self, *, run: GateRun, number: int, look: int | None = None, **kwargs: Any) -> None:
        super().__init__(run=run, **kwargs)
        self.number = number
        self.look = look  # a sequential gate's look: the pass times that look's cells only

    def runtest(self) -> None:
        reason = None if self.look is None else self.run.stop_reason(self.look)
        if reason is not None:
            pytest.skip(reason)
        samples = self.run.timing_pass(self.number, self.look)
        self.user_properties.append((TIMING_PROPERTY, [s.to_dict() for s in samples]))
        failed = [f"{s.variant}::{s.task}[{s.length}-d{s.depth:.2f}-s{s.seed}]: {s.error}" for s in samples if s.error is not None]
        if failed:
            raise CellFailed("; ".join(failed))


class CellFailed(Exception):
    """Raised by a cell item whose measurement errored."""


def make_gate_items(session: pytest.Session, run: GateRun) -> list[pytest.Item]:
    gate = run.gate
    node = GateNode.from_parent(session, name=gate.name, nodeid=gate.name, path=gate.path or session.path)
    node.run = run
    # genitems fires the collection hooks, so pytest counts and reports these items like collected tests.
    return list(session.genitems(node))
