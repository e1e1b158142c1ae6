"""The sweep: which cells a gate runs, in which interleaved order, and how one cell is measured."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .gate_spec import GateSpec, SweepSpec, VariantSpec
from .results import CellResult, Failure

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


def interleaved(gate: GateSpec) -> list[tuple[VariantSpec, Cell]]:
    """Baseline and candidate cell by cell, alternating which goes first (ABBA), so drift hits both sides."""
    order: list[tuple[VariantSpec, Cell]] = []
    for i, cell in enumerate(plan_cells(gate.sweep)):
        pair = gate.variants if i % 2 == 0 else gate.variants[::-1]
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
    repeats: int = 1, timeout_s: float | None = None, repeat_statistic: str = "min",
) -> CellResult:
    """Generate greedily for one prompt and score it: found iff the needle's value appears in the answer.

    With `repeats` > 1 the prompt is run that many times in full and the answers must agree (greedy decoding
    is deterministic, so a disagreement is an error, not noise). Timings are the repeats' minimum by default:
    on a shared machine, interference only ever adds time, so the minimum is the steadiest estimate of what
    the prompt itself costs; `median` is the alternative.
    """
    pick = min if repeat_statistic == "min" else statistics.median
    runs = [
        backend.generate(prompt.token_ids, variant=variant, max_new_tokens=max_new_tokens, timeout_s=timeout_s)
        for _ in range(repeats)
    ]
    gen = runs[0]
    if any(r.answer != gen.answer for r in runs[1:]):
        raise RuntimeError(f"repeated greedy runs disagree: {[r.answer for r in runs]!r}")
    decode = [r.decode_s_per_token for r in runs if r.decode_s_per_token is not None]
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
        prefill_s=pick(r.prefill_s for r in runs),
        decode_s_per_token=pick(decode) if decode else None,
        total_s=pick(r.total_s for r in runs),
        new_tokens=gen.new_tokens,
        kv_bytes=gen.kv_bytes,
        kv_bytes_analytic=gen.kv_bytes_analytic,
        kv_tokens=gen.kv_tokens,
        peak_bytes=max((r.peak_bytes for r in runs if r.peak_bytes is not None), default=None),
        prompt_sha256=prompt.prompt_sha256,
        needle_start=prompt.needle_span[0],
        repeats=repeats,
    )


def errored_cell(variant: VariantSpec, cell: Cell, error: str, prompt: Any = None) -> CellResult:
    """The record of a cell that could not be measured: it blocks approval instead of vanishing."""
    return CellResult(
        variant=variant.name, task=cell.task, length=cell.length, tokens=getattr(prompt, "tokens", 0),
        depth=cell.depth, seed=cell.seed, found=False, answer="", expected=getattr(prompt, "answer", ""),
        prefill_s=None, decode_s_per_token=None, total_s=None, new_tokens=0, kv_bytes=None,
        kv_bytes_analytic=None, kv_tokens=None, peak_bytes=None,
        prompt_sha256=getattr(prompt, "prompt_sha256", ""), error=error, failure="error",
    )
