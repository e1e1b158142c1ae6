"""The gate's `sweep:` section: the cells (lengths, depths, seeds, tasks), timing, loss and sequential looks, parsed and validated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from . import limits
from .limits import shown
from .reader import Reader as _Reader

if TYPE_CHECKING:
    from ..tasks import TaskSpec
    from .load import LoadSpec

RepeatStatistic = Literal["min", "median"]


@dataclass(frozen=True)
class LossSpec:
    """Next-token loss by position over one long seeded text per side (see loss_curve)."""

    tokens: int
    buckets: int = 8
    seed: int = 0


@dataclass(frozen=True)
class TimingSpec:
    """Which cells are timed (full, uncached runs; latency metrics read them): those whose length, depth and
    seed are all listed (None lists every value). Untimed cells only answer, and may reuse cached prefixes."""

    lengths: tuple[int, ...] | None = None
    depths: tuple[float, ...] | None = None
    seeds: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SequentialSpec:
    """A sweep run in looks of `batch` seeds (0, 1, ... up to `max_seeds`), stopping once every check is decided.

    `alpha` is the gate's false-reject rate over all looks and checks, split evenly among them (Bonferroni; see
    docs/statistics.md)."""

    batch: int
    max_seeds: int
    alpha: float = 0.05

    @property
    def planned_looks(self) -> int:
        return -(-self.max_seeds // self.batch)

    def seeds_through(self, look: int) -> tuple[int, ...]:
        """The seeds read at look `look` (1-based): every seed of that look and the looks before it."""
        return tuple(range(min(look * self.batch, self.max_seeds)))

    def look_of(self, seed: int) -> int:
        return seed // self.batch + 1


@dataclass(frozen=True)
class SweepSpec:
    lengths: tuple[int, ...]
    depths: tuple[float, ...]
    seeds: tuple[int, ...] = (0,)
    middle: tuple[float, float] = (0.25, 0.75)
    max_new_tokens: int = 24
    tasks: tuple[TaskSpec, ...] = ()  # the task families swept (default: niah)
    repeats: int = 1  # timed, full runs of each prompt
    repeat_statistic: RepeatStatistic = "min"  # how a cell's repeated timings become one number
    cell_timeout_s: float | None = None
    loss: LossSpec | None = None
    timing: TimingSpec = TimingSpec()
    sequential: SequentialSpec | None = None
    require_sensitivity: bool = False  # a sweep where no task and length can show a recall change is incomplete
    beyond_trained_positions: bool = False  # lengths past a side's positions are meant (the start-up check allows them)
    load: LoadSpec | None = None  # concurrent requests to served engines (gate/load.py)

    def timed(self, length: int, depth: float, seed: int) -> bool:
        t = self.timing
        return (
            (t.lengths is None or length in t.lengths)
            and (t.depths is None or any(abs(depth - d) < 1e-9 for d in t.depths))
            and (t.seeds is None or seed in t.seeds)
        )


SWEEP_KEYS = ("lengths", "depths", "seeds", "middle", "max_new_tokens", "tasks", "repeats", "repeat_statistic", "cell_timeout_s",
              "loss", "timing", "beyond_trained_positions", "sequential", "require_sensitivity", "load")


def parse_sweep(r: _Reader, raw: Any) -> SweepSpec:
    from .load import parse_load

    s = r.mapping(raw, "sweep", {k: "" for k in SWEEP_KEYS})
    if "lengths" not in s or "depths" not in s:
        raise r.fail("sweep", "needs both lengths and depths", "add sweep.lengths: [1024, ...] and sweep.depths: [0.0, ..., 1.0]")
    lengths = tuple(r.integer(x, "sweep.lengths", low=64, high=limits.MAX_LENGTH_TOKENS)
                    for x in r.listing(s["lengths"], "sweep.lengths", most=limits.MAX_LENGTHS))
    depths = tuple(r.number(x, "sweep.depths", low=0.0, high=1.0) for x in r.listing(s["depths"], "sweep.depths", most=limits.MAX_DEPTHS))
    _distinct_depth_ids(r, depths)
    sequential = _sequential(r, s.get("sequential"))
    if sequential is not None and "seeds" in s:
        raise r.fail("sweep.seeds", "cannot be given with sweep.sequential (its looks run seeds 0, 1, ... up to max_seeds)",
                     "drop sweep.seeds, or drop sweep.sequential to run a fixed set of seeds")
    seeds = tuple(range(sequential.max_seeds)) if sequential is not None else tuple(
        r.integer(x, "sweep.seeds", high=limits.MAX_SEED) for x in r.listing(s.get("seeds", [0]), "sweep.seeds", most=limits.MAX_SEEDS))
    middle_raw = s.get("middle", [0.25, 0.75])
    if not isinstance(middle_raw, list) or len(middle_raw) != 2:
        raise r.fail("sweep.middle", f"expected [low, high], got {shown(middle_raw)}", "write sweep.middle: [0.25, 0.75]")
    lo, hi = (r.number(x, "sweep.middle", low=0.0, high=1.0) for x in middle_raw)
    if lo > hi:
        raise r.fail("sweep.middle", f"low {lo} is above high {hi}", "write the band as [low, high]")
    if not any(lo <= d <= hi for d in depths):
        raise r.fail("sweep.depths", f"no depth falls inside the middle band [{lo}, {hi}]", "add a middle depth such as 0.5")
    tasks = _tasks(r, s.get("tasks", ["niah"]))
    _bounded_cells(r, tasks, lengths, depths, seeds)
    beyond = s.get("beyond_trained_positions", False)
    return SweepSpec(
        lengths=lengths,
        depths=depths,
        seeds=seeds,
        middle=(lo, hi),
        max_new_tokens=r.integer(s.get("max_new_tokens", 24), "sweep.max_new_tokens", low=1, high=limits.MAX_NEW_TOKENS),
        tasks=tasks,
        repeats=r.integer(s.get("repeats", 1), "sweep.repeats", low=1, high=limits.MAX_REPEATS),
        repeat_statistic=r.choice(s.get("repeat_statistic", "min"), "sweep.repeat_statistic", get_args(RepeatStatistic)),  # type: ignore[arg-type]
        cell_timeout_s=None if s.get("cell_timeout_s") is None else r.number(
            s["cell_timeout_s"], "sweep.cell_timeout_s", low=0.001, high=limits.MAX_CELL_TIMEOUT_S),
        loss=_loss(r, s.get("loss")),
        timing=_timing(r, s.get("timing"), lengths, depths, seeds),
        beyond_trained_positions=r.boolean(beyond, "sweep.beyond_trained_positions"),
        sequential=sequential,
        require_sensitivity=r.boolean(s.get("require_sensitivity", False), "sweep.require_sensitivity"),
        load=parse_load(r, s.get("load")),
    )


def _sequential(r: _Reader, raw: Any) -> SequentialSpec | None:
    if raw is None:
        return None
    m = r.mapping(raw, "sweep.sequential", {"batch": "", "max_seeds": "", "alpha": ""})
    for key in ("batch", "max_seeds"):
        if key not in m:
            raise r.fail(f"sweep.sequential.{key}", "is missing", "write sweep.sequential: {batch: 2, max_seeds: 6}")
    batch = r.integer(m["batch"], "sweep.sequential.batch", low=1)
    max_seeds = r.integer(m["max_seeds"], "sweep.sequential.max_seeds", low=1, high=limits.MAX_SEEDS)
    if batch > max_seeds:
        raise r.fail("sweep.sequential.batch", f"{batch} is above max_seeds {max_seeds}", "use a batch of at most max_seeds seeds")
    return SequentialSpec(batch, max_seeds, r.number(m.get("alpha", 0.05), "sweep.sequential.alpha", low=0.001, high=0.5))


def _distinct_depth_ids(r: _Reader, depths: tuple[float, ...]) -> None:
    """Node ids show a depth to two decimals (`d0.50`); two depths that print alike would share every id, and
    the second cell's result would be filed under the first. Refused rather than renamed: ids are what users
    select with -k and what earlier results were recorded under."""
    seen: dict[str, float] = {}
    for depth in depths:
        label = f"{depth:.{limits.DEPTH_ID_DECIMALS}f}"
        if label in seen:
            raise r.fail("sweep.depths", f"{seen[label]:g} and {depth:g} both show as d{label} in node ids",
                         "use depths at least 0.01 apart")
        seen[label] = depth


def _bounded_cells(r: _Reader, tasks: tuple[TaskSpec, ...], lengths: tuple[int, ...], depths: tuple[float, ...],
                   seeds: tuple[int, ...]) -> None:
    from ..tasks import uses_depth

    cells = sum(len(lengths) * (len(depths) if uses_depth(t) else 1) * len(seeds) for t in tasks)
    if cells > limits.MAX_CELLS:
        raise r.fail("sweep", f"plans {cells:,} cells per side (tasks x lengths x depths x seeds)",
                     f"sweep at most {limits.MAX_CELLS:,} cells per side, e.g. fewer seeds")


def _timing(r: _Reader, raw: Any, lengths: tuple[int, ...], depths: tuple[float, ...], seeds: tuple[int, ...]) -> TimingSpec:
    if raw is None:
        return TimingSpec()
    m = r.mapping(raw, "sweep.timing", {"lengths": "", "depths": "", "seeds": ""})
    picked: dict[str, Any] = {}
    for key, swept in (("lengths", lengths), ("depths", depths), ("seeds", seeds)):
        if m.get(key) is None:
            continue
        where = f"sweep.timing.{key}"
        values = tuple(r.number(v, where) if key == "depths" else r.integer(v, where) for v in r.listing(m[key], where, most=len(swept)))
        for value in values:
            if value not in swept:
                raise r.fail(where, f"{shown(value)} is not one of the swept {key} {shown(list(swept))}", f"time a subset of sweep.{key}")
        picked[key] = values
    return TimingSpec(**picked)


def _loss(r: _Reader, raw: Any) -> LossSpec | None:
    if raw is None:
        return None
    m = r.mapping(raw, "sweep.loss", {"tokens": "", "buckets": "", "seed": ""})
    if "tokens" not in m:
        raise r.fail("sweep.loss.tokens", "is missing", "add tokens: 8192 (the length of the text the loss is measured over)")
    tokens = r.integer(m["tokens"], "sweep.loss.tokens", low=64, high=limits.MAX_LENGTH_TOKENS)
    buckets = r.integer(m.get("buckets", 8), "sweep.loss.buckets", low=1, high=limits.MAX_LOSS_BUCKETS)
    if buckets > tokens // 8:
        raise r.fail("sweep.loss.buckets", f"{buckets} buckets over {tokens} tokens leaves under 8 tokens each", "use fewer buckets")
    return LossSpec(tokens=tokens, buckets=buckets, seed=r.integer(m.get("seed", 0), "sweep.loss.seed", high=limits.MAX_SEED))


def _tasks(r: _Reader, raw: Any) -> tuple[TaskSpec, ...]:
    from ..tasks import TaskError, parse_task

    specs = []
    for i, entry in enumerate(r.listing(raw, "sweep.tasks", most=limits.MAX_TASKS)):
        try:
            specs.append(parse_task(entry))
        except TaskError as exc:
            raise r.fail(f"sweep.tasks[{i}]" + (f".{exc.key}" if exc.key else ""), exc.problem, exc.fix) from None
    names = [spec.name for spec in specs]
    for name in names:
        if names.count(name) > 1:
            raise r.fail("sweep.tasks", f"two entries are both named {shown(name)}", "give each a distinct `name:`")
    return tuple(specs)
