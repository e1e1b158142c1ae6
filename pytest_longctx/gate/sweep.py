"""The sweep: which cells a gate runs, in which interleaved order, and how one cell is measured."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .results import CellResult, Failure, TimingSample
from .spec import GateSpec, SweepSpec, VariantSpec

if TYPE_CHECKING:
    from ..backends.in_process import Backend
    from ..backends.protocol import Generation
    from ..changes.retrieval import RetrievedPrompt
    from ..tasks import TaskPrompt, TaskSpec


@dataclass(frozen=True)
class Cell:
    """One point of the sweep, shared by both variants (they see the same prompt)."""

    task: str
    length: int
    depth: float
    seed: int

    @property
    def id(self) -> str:
        return f"{self.task}[{self.length}-d{self.depth:.2f}-s{self.seed}]"


def plan_cells(sweep: SweepSpec) -> list[Cell]:
    """Every cell of the sweep; a family where position means nothing (aggregation) runs at one depth only."""
    from ..tasks import uses_depth

    cells = []
    for spec in sweep.tasks:
        depths = sweep.depths if uses_depth(spec) else (positionless_depth(sweep),)
        cells += [Cell(spec.name, n, d, s) for n in sweep.lengths for d in depths for s in sweep.seeds]
    return cells


def positionless_depth(sweep: SweepSpec) -> float:
    """The depth a position-free family's cells are filed under: the swept depth nearest the middle band's centre."""
    centre = sum(sweep.middle) / 2
    return min(sweep.depths, key=lambda d: (abs(d - centre), d))


def task_spec(sweep: SweepSpec, name: str) -> TaskSpec:
    for spec in sweep.tasks:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown task {name!r}")


def interleaved(gate: GateSpec, variants: tuple[VariantSpec, ...] | None = None, *, flip: bool = False) -> list[tuple[VariantSpec, Cell]]:
    """Baseline and candidate cell by cell, alternating which goes first (ABBA), so drift hits both sides.

    `flip` starts with the other side: successive timing passes alternate, so no cell is always timed first.
    """
    sides = gate.variants if variants is None else variants
    order: list[tuple[VariantSpec, Cell]] = []
    for i, cell in enumerate(plan_cells(gate.sweep)):
        pair = sides if (i % 2 == 0) != flip else sides[::-1]
        order.extend((variant, cell) for variant in pair)
    return order


def build_prompt(tokenizer: Any, spec: TaskSpec, cell: Cell, variant: VariantSpec | None = None) -> TaskPrompt:
    """The cell's prompt as `variant`'s prompt-level changes lay it out (edge packing, a history budget), token-exact."""
    from ..changes.base import PromptPlan
    from ..tasks import FAMILIES, build_task

    plan = PromptPlan()
    for change in variant.changes if variant is not None else ():
        plan = change.prompt(plan, FAMILIES[spec.family])
    return build_task(tokenizer, spec, length=cell.length, depth=cell.depth, seed=cell.seed, arrange=plan.arrange,
                      history=plan.history)


def run_cell(
    backend: Backend, variant: VariantSpec, cell: Cell, prompt: TaskPrompt, *, max_new_tokens: int,
    timeout_s: float | None = None, timed: bool = True, reuse: Any = None,
) -> CellResult:
    """The recall run of one cell: generate greedily and score it with the task's own scoring.

    A timed cell's run is a full, uncached run of the prompt and the cell's first timing sample (the timing
    passes add the rest, see `merge_samples`); an untimed cell's run records no timings and may start from a
    prefix cached in `reuse` (a prefix_reuse.PrefixStore), which every run of the pass feeds. Decoding stops
    once the task says the answer is complete (its value given, a wrong complete value, or the line ended).
    """
    prompt, retrieval = _unwrap(prompt)
    extra_kw: dict[str, Any] = {} if reuse is None else {"reuse": reuse, "reuse_prefix": not timed}
    if getattr(backend, "measures_logprob", False):
        extra_kw["expected"] = prompt.answers
    if getattr(backend, "verifies_cold", False):
        extra_kw["cold"] = timed  # a served engine's prefix cache must not serve a timed prompt
    gen = backend.generate(prompt.token_ids, variant=variant, max_new_tokens=max_new_tokens, timeout_s=timeout_s,
                           stop=prompt.answer_complete, **extra_kw)
    reused = getattr(gen, "reused_tokens", 0)
    timed = timed and reused == 0
    score = prompt.score(gen.answer, hit_limit=gen.hit_limit)
    failure: Failure | None = score.failure
    if not score.found and retrieval is not None and retrieval.not_retrieved:
        failure = "not_retrieved"  # the evidence never reached the model: the retriever's miss, not the model's
    elif not score.found and _cut_by_history(variant, prompt):
        failure = "cut_from_history"  # the budget dropped the turn that held the fact: the budget's loss
    extra = retrieval.seconds if retrieval is not None else 0.0  # time to first token includes retrieving
    return CellResult(
        variant=variant.name,
        **dataclasses.asdict(cell),
        tokens=prompt.tokens,
        found=score.found,
        score=score.fraction,
        failure=failure,
        excerpt=prompt.excerpt(),
        answer=gen.answer,
        expected=prompt.answer,
        **_first_sample(gen, extra) if timed else _UNTIMED,
        new_tokens=gen.new_tokens,
        kv_bytes=gen.kv_bytes,
        kv_bytes_analytic=gen.kv_bytes_analytic,
        kv_tokens=gen.kv_tokens,
        peak_bytes=gen.peak_bytes,
        prompt_sha256=prompt.prompt_sha256,
        needle_start=prompt.needle_start,
        reused_tokens=reused,
        retrieval=None if retrieval is None else retrieval.record,
        kv_source=getattr(gen, "kv_source", "measured"),
        answer_logprob=getattr(gen, "answer_logprob", None),
        cold_check=getattr(gen, "cold_check", "n/a") if timed else "n/a",
        # The served engine's own cache figures (in-process models have none).
        kv_capacity_tokens=getattr(gen, "kv_capacity_tokens", None),
        kv_capacity_bytes=getattr(gen, "kv_capacity_bytes", None),
        kv_slots=getattr(gen, "kv_slots", None),
    )


# An untimed recall run's timings: none (the samples default to none).
_UNTIMED: dict[str, Any] = {"prefill_s": None, "decode_s_per_token": None, "total_s": None, "repeats": 0}


def _first_sample(gen: Generation, extra: float) -> dict[str, Any]:
    """A timed recall run's timings: its own full run as the first sample (`extra`: the retrieval's seconds)."""
    prefill, decode, total = gen.prefill_s + extra, gen.decode_s_per_token, gen.total_s + extra
    return {"prefill_s": prefill, "decode_s_per_token": decode, "total_s": total, "repeats": 1, "prefill_samples": (prefill,),
            "decode_samples": () if decode is None else (decode,), "total_samples": (total,)}


def _cut_by_history(variant: VariantSpec, prompt: TaskPrompt) -> bool:
    from ..tasks import FAMILIES

    family = FAMILIES.get(prompt.family)
    return variant.find("history") is not None and family is not None and family.takes_history and not prompt.evidence_spans


def _unwrap(prompt: Any) -> tuple[TaskPrompt, RetrievedPrompt | None]:
    """A retrieval side's prompt comes with what retrieval did; the others are plain task prompts."""
    from ..changes.retrieval import RetrievedPrompt

    return (prompt.prompt, prompt) if isinstance(prompt, RetrievedPrompt) else (prompt, None)


def timed_run(
    backend: Backend, variant: VariantSpec, cell: Cell, prompt: TaskPrompt, *, max_new_tokens: int,
    timeout_s: float | None = None,
) -> TimingSample:
    """One full, uncached run of the prompt, for a timing pass; a failure is recorded, not raised.

    A retrieval side's timings include the retrieval it did for the prompt."""
    prompt, retrieval = _unwrap(prompt)
    extra = retrieval.seconds if retrieval is not None else 0.0
    cold: dict[str, Any] = {"cold": True} if getattr(backend, "verifies_cold", False) else {}
    try:
        gen = backend.generate(prompt.token_ids, variant=variant, max_new_tokens=max_new_tokens, timeout_s=timeout_s,
                               stop=prompt.answer_complete, **cold)
    except Exception as exc:  # noqa: BLE001 - a timed run that fails (timeout, OOM) blocks approval via its cell
        return TimingSample(variant.name, cell.task, cell.length, cell.depth, cell.seed, None, None, None, "",
                            f"{type(exc).__name__}: {exc}")
    return TimingSample(
        variant.name, cell.task, cell.length, cell.depth, cell.seed, gen.prefill_s + extra, gen.decode_s_per_token,
        gen.total_s + extra, gen.answer, cold_check=getattr(gen, "cold_check", "n/a"),
    )


def merge_samples(cell: CellResult, samples: Iterable[TimingSample], *, repeats: int, statistic: str = "min") -> CellResult:
    """Fold a cell's timed runs into it: timings become the repeat statistic over every sample.

    Timings are the samples' minimum by default: on a shared machine interference only ever adds time, so
    the minimum is the steadiest estimate of what the prompt itself costs; `median` is the alternative.
    The samples come from passes spread over the whole sweep, so one burst of interference cannot hit
    every sample of a cell. A failed or disagreeing timed run, or fewer than `repeats` samples, makes the
    cell errored: greedy decoding is deterministic, and a gate must not approve on partial timings.
    """
    if cell.error is not None:
        return cell
    own = [s for s in samples if s.variant == cell.variant and s.key == cell.key]
    problem = next((f"a timed run failed: {s.error}" for s in own if s.error is not None), None)
    if problem is None:
        problem = next((f"a timed run answered {s.answer!r} where the recall run answered {cell.answer!r}; greedy runs must agree"
                        for s in own if s.answer != cell.answer), None)
    if repeats == 0:  # an untimed cell: its answer is all it gives
        return cell if problem is None else dataclasses.replace(cell, error=problem, failure="error")
    prefill = cell.prefill_samples + tuple(s.prefill_s for s in own if s.prefill_s is not None)
    decode = cell.decode_samples + tuple(s.decode_s_per_token for s in own if s.decode_s_per_token is not None)
    total = cell.total_samples + tuple(s.total_s for s in own if s.total_s is not None)
    if problem is None and len(total) < repeats:
        problem = f"only {len(total)} of {repeats} timed runs were recorded (timing passes deselected or interrupted)"
    pick = min if statistic == "min" else statistics.median
    checks = {cell.cold_check, *(s.cold_check for s in own if s.error is None)}
    # The weakest word on coldness stands for the cell: one unverified run makes its timings unverified.
    cold_check = next((c for c in ("unverified", "assumed", "engine") if c in checks), cell.cold_check)
    merged = dataclasses.replace(
        cell, cold_check=cold_check, prefill_samples=prefill, decode_samples=decode, total_samples=total, repeats=len(total),
        prefill_s=pick(prefill) if prefill else None, decode_s_per_token=pick(decode) if decode else None,
        total_s=pick(total) if total else None,
    )
    return merged if problem is None else dataclasses.replace(merged, error=problem, failure="error")


def errored_cell(variant: VariantSpec, cell: Cell, error: str, prompt: Any = None) -> CellResult:
    """The record of a cell that could not be measured: it blocks approval instead of vanishing."""
    if prompt is not None:
        prompt, _ = _unwrap(prompt)
    return CellResult(
        variant=variant.name, task=cell.task, length=cell.length, tokens=getattr(prompt, "tokens", 0),
        depth=cell.depth, seed=cell.seed, found=False, answer="", expected=getattr(prompt, "answer", ""),
        prefill_s=None, decode_s_per_token=None, total_s=None, new_tokens=0, kv_bytes=None,
        kv_bytes_analytic=None, kv_tokens=None, peak_bytes=None,
        prompt_sha256=getattr(prompt, "prompt_sha256", ""), error=error, failure="error",
    )
