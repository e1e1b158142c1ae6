"""The sweep: which cells a gate runs, in which interleaved order, and how one cell is measured."""

from __future__ import annotations

import dataclasses
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .gate_spec import GateSpec, SweepSpec, VariantSpec
from .results import CellResult, Failure, TimingSample

if TYPE_CHECKING:
    from .backend import Backend
    from .haystack import Haystack


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
    return [Cell(t, n, d, s) for t in sweep.tasks for n in sweep.lengths for d in sweep.depths for s in sweep.seeds]


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


def build_prompt(backend: Backend, cell: Cell) -> Haystack:
    from .haystack import build_haystack

    if cell.task != "niah":
        raise ValueError(f"unknown task {cell.task!r}")
    return build_haystack(backend.tokenizer, length=cell.length, depth=cell.depth, seed=cell.seed)


def classify_miss(answer: str, expected: str, *, hit_limit: bool) -> Failure | None:
    """Why a cell missed: `partial` (some of the value's parts), `truncated` (cut off while producing the value, or
    before giving any value), `missing` (answered with something else), `refusal/other` (no answer at all);
    None when found."""
    if expected in answer:
        return None
    if not answer.strip():
        return "refusal/other"
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", expected) if p]
    present = [p for p in parts if p in answer]
    if hit_limit and any(answer.rstrip().endswith(expected[:i]) for i in range(1, len(expected))):
        return "truncated"
    if present:
        return "partial"
    # Cut off before giving any value is truncation; having given another value (digits) first is a miss.
    return "truncated" if hit_limit and not re.search(r"\d", answer) else "missing"


def excerpt(prompt: Haystack, context_chars: int = 240) -> str:
    """The needle's line with some prompt text either side, for the report's drill-down."""
    text, needle = prompt.prompt_text, prompt.needle.text
    at = text.find(needle)
    if at < 0:
        return ""
    start, end = max(0, at - context_chars), min(len(text), at + len(needle) + context_chars)
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


def run_cell(
    backend: Backend, variant: VariantSpec, cell: Cell, prompt: Haystack, *, max_new_tokens: int,
    timeout_s: float | None = None,
) -> CellResult:
    """The recall run of one cell: generate greedily and score it (found iff the needle's value is in the answer).

    A run that prefilled the whole prompt itself is also the cell's first timed sample; the timing passes add
    the rest (see `merge_samples`).
    """
    gen = backend.generate(prompt.token_ids, variant=variant, max_new_tokens=max_new_tokens, timeout_s=timeout_s)
    reused = getattr(gen, "reused_tokens", 0)
    timed = reused == 0
    return CellResult(
        variant=variant.name,
        task=cell.task,
        length=cell.length,
        tokens=prompt.tokens,
        depth=cell.depth,
        seed=cell.seed,
        found=prompt.answer in gen.answer,
        failure=classify_miss(gen.answer, prompt.answer, hit_limit=gen.hit_limit),
        excerpt=excerpt(prompt),
        answer=gen.answer,
        expected=prompt.answer,
        prefill_s=gen.prefill_s if timed else None,
        decode_s_per_token=gen.decode_s_per_token if timed else None,
        total_s=gen.total_s if timed else None,
        new_tokens=gen.new_tokens,
        kv_bytes=gen.kv_bytes,
        kv_bytes_analytic=gen.kv_bytes_analytic,
        kv_tokens=gen.kv_tokens,
        peak_bytes=gen.peak_bytes,
        prompt_sha256=prompt.prompt_sha256,
        needle_start=prompt.needle_span[0],
        repeats=1 if timed else 0,
        prefill_samples=(gen.prefill_s,) if timed else (),
        decode_samples=(gen.decode_s_per_token,) if timed and gen.decode_s_per_token is not None else (),
        total_samples=(gen.total_s,) if timed else (),
        reused_tokens=reused,
    )


def timed_run(
    backend: Backend, variant: VariantSpec, cell: Cell, prompt: Haystack, *, max_new_tokens: int,
    timeout_s: float | None = None,
) -> TimingSample:
    """One full, uncached run of the prompt, for a timing pass; a failure is recorded, not raised."""
    try:
        gen = backend.generate(prompt.token_ids, variant=variant, max_new_tokens=max_new_tokens, timeout_s=timeout_s)
    except Exception as exc:  # noqa: BLE001 - a timed run that fails (timeout, OOM) blocks approval via its cell
        return TimingSample(variant.name, cell.task, cell.length, cell.depth, cell.seed, None, None, None, "", f"{type(exc).__name__}: {exc}")
    return TimingSample(
        variant.name, cell.task, cell.length, cell.depth, cell.seed, gen.prefill_s, gen.decode_s_per_token, gen.total_s, gen.answer
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
    prefill = cell.prefill_samples + tuple(s.prefill_s for s in own if s.prefill_s is not None)
    decode = cell.decode_samples + tuple(s.decode_s_per_token for s in own if s.decode_s_per_token is not None)
    total = cell.total_samples + tuple(s.total_s for s in own if s.total_s is not None)
    if problem is None and len(total) < repeats:
        problem = f"only {len(total)} of {repeats} timed runs were recorded (timing passes deselected or interrupted)"
    pick = min if statistic == "min" else statistics.median
    merged = dataclasses.replace(
        cell, prefill_samples=prefill, decode_samples=decode, total_samples=total, repeats=len(total),
        prefill_s=pick(prefill) if prefill else None, decode_s_per_token=pick(decode) if decode else None,
        total_s=pick(total) if total else None,
    )
    return merged if problem is None else dataclasses.replace(merged, error=problem, failure="error")


def errored_cell(variant: VariantSpec, cell: Cell, error: str, prompt: Any = None) -> CellResult:
    """The record of a cell that could not be measured: it blocks approval instead of vanishing."""
    return CellResult(
        variant=variant.name, task=cell.task, length=cell.length, tokens=getattr(prompt, "tokens", 0),
        depth=cell.depth, seed=cell.seed, found=False, answer="", expected=getattr(prompt, "answer", ""),
        prefill_s=None, decode_s_per_token=None, total_s=None, new_tokens=0, kv_bytes=None,
        kv_bytes_analytic=None, kv_tokens=None, peak_bytes=None,
        prompt_sha256=getattr(prompt, "prompt_sha256", ""), error=error, failure="error",
    )
