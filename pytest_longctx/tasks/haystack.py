"""Needle-in-a-haystack prompts built to an exact token count, with the needle's token span and depth."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .needles import (
    DOCUMENT_INSTRUCTIONS,
    SHIPPING_INSTRUCTIONS,
    TOLERANCE,
    Needle,
    filler_lines,
    make_needle,
    make_needles,
)
from .token_fit import Builder, LineSource, fit_partial_line, fit_whole_lines

__all__ = [
    "Haystack", "MultiHaystack", "Needle", "build_haystack", "build_multi_haystack", "filler_lines", "make_needle", "make_needles",
]


@dataclass(frozen=True)
class Haystack:
    """A prompt of (ideally exactly) `length` tokens with `needle` on its own line at `depth`.

    `actual_depth` is the fraction of the filler tokens that precede the needle line, so a needle on
    the first haystack line reads 0.0 and one on the last reads 1.0.
    """

    prompt_text: str
    token_ids: tuple[int, ...]
    length: int
    depth: float
    actual_depth: float
    needle: Needle
    needle_span: tuple[int, int]
    seed: int

    @property
    def tokens(self) -> int:
        return len(self.token_ids)

    @property
    def answer(self) -> str:
        return self.needle.answer

    @property
    def prompt_sha256(self) -> str:
        """sha256 hex digest of the token ids packed as little-endian int32 (`struct.pack("<Ni", *ids)`)."""
        return hashlib.sha256(struct.pack(f"<{len(self.token_ids)}i", *self.token_ids)).hexdigest()


def build_haystack(
    tokenizer: Any,
    *,
    length: int,
    depth: float,
    seed: int = 0,
    needle: Needle | None = None,
    filler: Iterable[str] | None = None,
    instructions: str | None = None,
) -> Haystack:
    """Build a prompt of `length` tokens (exact when reachable, always within 1%) with the needle at `depth`.

    Args:
        tokenizer: a transformers tokenizer; its chat template wraps the content as one user message,
            or, without one, the content is followed by "\\nAnswer:".
        length: the number of tokens the prompt must have.
        depth: where the needle line sits in the haystack, 0.0 (first line) to 1.0 (last line).
        seed: picks the needle (unless given) and the generated filler.
        needle: the needle to hide; `make_needle(seed)` if None.
        filler: the haystack's lines, in order; the seeded shipping log if None. It is not cycled: a
            filler that runs out before `length` raises ValueError.
        instructions: the line before the haystack; a default that fits the filler if None.

    Returns:
        The Haystack; `token_ids` is `tokenizer(prompt_text, add_special_tokens=False)["input_ids"]`.
    """
    needle = needle if needle is not None else make_needle(seed)
    if instructions is None:
        instructions = SHIPPING_INSTRUCTIONS if filler is None else DOCUMENT_INSTRUCTIONS
    placed = _place(tokenizer, length, (needle,), (depth,), seed, filler, instructions, needle.question)
    return Haystack(
        prompt_text=placed.text,
        token_ids=placed.token_ids,
        length=length,
        depth=float(depth),
        actual_depth=placed.actual_depths[0],
        needle=needle,
        needle_span=placed.spans[0],
        seed=seed,
    )


@dataclass(frozen=True)
class MultiHaystack:
    """A prompt of (ideally exactly) `length` tokens with each of `needles` on its own line at its depth.

    `needle_spans[i]` and `actual_depths[i]` belong to `needles[i]`; `question` is asked once, after the haystack.
    """

    prompt_text: str
    token_ids: tuple[int, ...]
    length: int
    depths: tuple[float, ...]
    actual_depths: tuple[float, ...]
    needles: tuple[Needle, ...]
    needle_spans: tuple[tuple[int, int], ...]
    seed: int
    question: str

    @property
    def tokens(self) -> int:
        return len(self.token_ids)

    @property
    def answers(self) -> tuple[str, ...]:
        return tuple(n.answer for n in self.needles)

    @property
    def prompt_sha256(self) -> str:
        return hashlib.sha256(struct.pack(f"<{len(self.token_ids)}i", *self.token_ids)).hexdigest()

    def found(self, text: str) -> tuple[bool, ...]:
        """For each needle, whether its answer appears in `text`."""
        return tuple(answer in text for answer in self.answers)


def build_multi_haystack(
    tokenizer: Any,
    *,
    length: int,
    needles: Sequence[Needle],
    depths: Sequence[float],
    seed: int = 0,
    filler: Iterable[str] | None = None,
    instructions: str | None = None,
    question: str | None = None,
) -> MultiHaystack:
    """Like `build_haystack`, with several needles: `needles[i]` sits on its own line at `depths[i]`.

    Needles at the same line boundary keep their given order. `question` defaults to the needles'
    questions, one per line. Each answer must occur exactly once in the prompt.
    """
    needles, depths = tuple(needles), tuple(float(d) for d in depths)
    if not needles or len(needles) != len(depths):
        raise ValueError(f"give one depth per needle (got {len(needles)} needles and {len(depths)} depths)")
    if len({n.answer for n in needles}) != len(needles):
        raise ValueError("the needles' answers must be distinct, or a found answer could belong to any of them")
    if instructions is None:
        instructions = SHIPPING_INSTRUCTIONS if filler is None else DOCUMENT_INSTRUCTIONS
    question = question if question is not None else "\n".join(n.question for n in needles)
    placed = _place(tokenizer, length, needles, depths, seed, filler, instructions, question)
    return MultiHaystack(
        prompt_text=placed.text,
        token_ids=placed.token_ids,
        length=length,
        depths=depths,
        actual_depths=placed.actual_depths,
        needles=needles,
        needle_spans=placed.spans,
        seed=seed,
        question=question,
    )


@dataclass(frozen=True)
class _Placed:
    text: str
    token_ids: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    actual_depths: tuple[float, ...]


def _place(
    tokenizer: Any,
    length: int,
    needles: tuple[Needle, ...],
    depths: tuple[float, ...],
    seed: int,
    filler: Iterable[str] | None,
    instructions: str,
    question: str,
) -> _Placed:
    """Lay out filler lines and needles to `length` tokens; the shared core of the single- and multi-needle builders."""
    if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
        raise ValueError(f"length must be a positive integer, got {length!r}")
    for depth in depths:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth must be between 0.0 and 1.0, got {depth!r}")
    for needle in needles:
        if "\n" in needle.text or needle.answer not in needle.text:
            raise ValueError("the needle text must be a single line that contains the answer")
    builder = Builder(tokenizer, instructions, needles, question, depths)
    source = filler_lines(seed) if filler is None else (line.rstrip("\r\n") for line in filler)
    lines = LineSource(tokenizer, (line for line in source if line.strip()))

    minimum = builder.count([], builder.positions([]))
    if length < minimum:
        raise ValueError(
            f"length {length} is too small: the template, instructions, needle and question alone take "
            f"{minimum} tokens; use length >= {minimum}"
        )
    full, total = fit_whole_lines(builder, lines, length, minimum)
    layout = fit_partial_line(builder, lines, length, full, total)
    text = builder.prompt(layout.filler, layout.needle_at)
    token_ids = tuple(builder.encode(text))
    if abs(len(token_ids) - length) > TOLERANCE * length:  # only for lengths a few tokens above the minimum
        raise ValueError(
            f"could not build a prompt within 1% of {length} tokens (the closest was {len(token_ids)}); "
            "try a slightly different length"
        )
    spans, hay_start, hay_end = builder.spans(layout.filler, layout.needle_at)
    for needle, (start, end) in zip(needles, spans, strict=True):
        if needle.answer not in tokenizer.decode(list(token_ids[start:end])):
            raise RuntimeError(f"the needle's token span {start}:{end} does not decode to text holding {needle.answer!r}")
        if text.count(needle.answer) != 1:
            raise ValueError(f"the answer {needle.answer!r} also occurs in the filler; pick another needle or filler")
    filler_tokens = (hay_end - hay_start) - sum(end - start for start, end in spans)
    actual = []
    for start, _ in spans:
        before = sum(e - s for s, e in spans if e <= start)  # needle tokens ahead of this one are not filler
        depth = (start - hay_start - before) / filler_tokens if filler_tokens > 0 else 0.0
        actual.append(min(1.0, max(0.0, depth)))
    return _Placed(text, token_ids, tuple(spans), tuple(actual))
