"""Fitting a haystack prompt to an exact token count: rendering and counting candidates, whole filler lines, then
a trimmed line and a pad that land on the count."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .needles import NO_TEMPLATE_SUFFIX, Needle


class Builder:
    """Renders and counts prompts made of the instructions, haystack lines, needles and question.

    `needle_at[i]` is the filler line index before which `needles[i]` is inserted.
    """

    def __init__(
        self, tokenizer: Any, instructions: str, needles: tuple[Needle, ...], question: str, depths: tuple[float, ...]
    ) -> None:
        self.tokenizer = tokenizer
        self.instructions = instructions
        self.needles = needles
        self.question = question
        self.depths = depths
        self.chat = getattr(tokenizer, "chat_template", None) is not None

    def positions(self, costs: list[int]) -> tuple[int, ...]:
        """Each needle's line boundary for filler lines of these estimated costs."""
        return tuple(_needle_index(costs, depth) for depth in self.depths)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def haystack_lines(self, filler: list[str], needle_at: tuple[int, ...]) -> list[str]:
        if len(self.needles) == 1:
            at = needle_at[0]
            return filler[:at] + [self.needles[0].text] + filler[at:]
        lines: list[str] = []
        for index in range(len(filler) + 1):
            lines.extend(n.text for n, at in zip(self.needles, needle_at, strict=True) if at == index)
            if index < len(filler):
                lines.append(filler[index])
        return lines

    def content(self, filler: list[str], needle_at: tuple[int, ...]) -> str:
        body = "\n".join(self.haystack_lines(filler, needle_at))
        return f"{self.instructions}\n\n{body}\n\n{self.question}"

    def prompt(self, filler: list[str], needle_at: tuple[int, ...]) -> str:
        return self._wrap(self.content(filler, needle_at))

    def count(self, filler: list[str], needle_at: tuple[int, ...]) -> int:
        return len(self.encode(self.prompt(filler, needle_at)))

    def spans(self, filler: list[str], needle_at: tuple[int, ...]) -> tuple[list[tuple[int, int]], int, int]:
        """Token offsets of each needle line's start and end and of the haystack's, from tokenized prompt prefixes."""
        content = self.content(filler, needle_at)
        text = self._wrap(content)
        offset = text.find(content)
        if offset < 0:
            raise ValueError("the chat template changes the message text, so the needle cannot be located in it")
        head = offset + len(self.instructions) + 2
        lines = self.haystack_lines(filler, needle_at)
        starts = list(itertools.accumulate((len(line) + 1 for line in lines), initial=head))
        taken: set[int] = set()
        char_spans = []
        for needle in self.needles:  # the i-th needle is the first unclaimed line holding its text
            row = next(i for i, line in enumerate(lines) if line == needle.text and i not in taken)
            taken.add(row)
            char_spans.append((starts[row], starts[row] + len(needle.text)))
        body_end = head + len("\n".join(lines))
        def count(cut: int) -> int:
            return len(self.encode(text[:cut]))

        spans = [(count(a), count(b)) for a, b in char_spans]
        return spans, count(head), count(body_end)

    def _wrap(self, content: str) -> str:
        if not self.chat:
            return content + NO_TEMPLATE_SUFFIX
        return str(
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
            )
        )


class LineSource:
    """Filler lines drawn on demand, with per-line token estimates (the line plus its newline)."""

    def __init__(self, tokenizer: Any, lines: Iterator[str]) -> None:
        self.tokenizer = tokenizer
        self.lines = lines
        self.texts: list[str] = []
        self.costs: list[int] = []
        self.cost_total = 0
        self.exhausted = False

    def ensure(self, count: int) -> bool:
        """Draw lines until `count` are held; False if the filler ran out first."""
        while len(self.texts) < count and not self.exhausted:
            batch = list(itertools.islice(self.lines, max(64, count - len(self.texts))))
            if not batch:
                self.exhausted = True
                break
            encoded = self.tokenizer(batch, add_special_tokens=False)["input_ids"]
            self.texts.extend(batch)
            self.costs.extend(len(ids) + 1 for ids in encoded)
            self.cost_total = sum(self.costs)
        return len(self.texts) >= count

    def ensure_tokens(self, tokens: int) -> None:
        """Draw lines until their estimated total exceeds `tokens` (or the filler runs out)."""
        while self.cost_total <= tokens and self.ensure(len(self.texts) + 64):
            pass


@dataclass(frozen=True)
class _Layout:
    filler: list[str]
    needle_at: tuple[int, ...]
    total: int


def _needle_index(costs: list[int], depth: float) -> int:
    """The line boundary whose estimated token offset is nearest `depth` of the filler's estimated tokens."""
    cumulative = list(itertools.accumulate(costs, initial=0))
    target = depth * cumulative[-1]
    return min(range(len(cumulative)), key=lambda i: (abs(cumulative[i] - target), i))


def fit_whole_lines(builder: Builder, lines: LineSource, length: int, minimum: int) -> tuple[int, int]:
    """The most whole filler lines whose prompt fits in `length` tokens, and that prompt's token count.

    A search between the most lines known to fit and the fewest known not to, stepped by the per-line
    estimates, so it settles in a few full tokenizations.
    """

    def measure(count: int) -> int:
        return builder.count(lines.texts[:count], builder.positions(lines.costs[:count]))

    def lines_fitting(start: int, budget: int) -> int:
        lines.ensure_tokens(sum(lines.costs[:start]) + budget)
        spent = 0
        for index in range(start, len(lines.costs)):
            spent += lines.costs[index]
            if spent > budget:
                return index - start
        return len(lines.costs) - start

    low, low_total, high = 0, minimum, None
    count = lines_fitting(0, length - minimum)
    while True:
        if count > low:
            total = measure(count)
            if total <= length:
                low, low_total = count, total
            else:
                high = count
        if high == low + 1 or (high is None and low == len(lines.texts) and not lines.ensure(low + 1)):
            break
        count = low + max(1, lines_fitting(low, length - low_total))
        count = min(count, high - 1 if high is not None else len(lines.texts))
    if high is None and low_total != length:  # every line of a finite filler fits with room to spare
        raise ValueError(
            f"the filler holds about {low_total - minimum} tokens but a {length}-token prompt needs "
            f"{length - minimum}; pass a longer filler"
        )
    return low, low_total


def fit_partial_line(builder: Builder, lines: LineSource, length: int, full: int, total: int) -> _Layout:
    """Close the gap left by whole lines: pad with a prefix of a following line, trimming the last whole line if needed.

    A prefix alone cannot add every count (a token that only comes with the one before it, or a gap of
    one token), so the last whole line may lose words while the padding gains them. Costs come from one
    batch tokenization of all prefixes on their own; each choice is then checked with a full tokenization.
    """
    best = _Layout(lines.texts[:full], builder.positions(lines.costs[:full]), total)
    if total == length:
        return best
    lines.ensure(full + _CANDIDATE_LINES)
    whole = max(0, full - 1)
    last = lines.texts[whole:full]  # the whole line that may be trimmed, if any
    pads = _fragments(builder.tokenizer, lines.texts[full : full + _CANDIDATE_LINES])
    trims = _fragments(builder.tokenizer, last, keep_whole=True) if last else [_Fragment("", 0, True, True)]
    kept = next(fragment.cost for fragment in trims if fragment.whole)
    target = length - total + kept  # tokens the trimmed line and the padding must add up to
    error, tried = 0, set()
    for _ in range(_TRIES):  # later tries correct for tokens that merge across line boundaries
        pairs = (pair for pair in _fragment_pairs(trims, pads, target - error) if pair not in tried)
        choice = next(pairs, None)
        if choice is None:
            break
        tried.add(choice)
        tail = [fragment for fragment in choice if fragment.text]
        filler = lines.texts[:whole] + [fragment.text for fragment in tail]
        needle_at = builder.positions(lines.costs[:whole] + [fragment.cost for fragment in tail])
        layout = _Layout(filler, needle_at, builder.count(filler, needle_at))
        if layout.total == length:
            return layout
        if best.total < layout.total < length:
            best = layout
        error = layout.total - (total - kept + sum(fragment.cost for fragment in choice))
    return best


_CANDIDATE_LINES = 8


_TRIES = 6


@dataclass(frozen=True)
class _Fragment:
    text: str
    cost: int  # tokens of the fragment on its own line, its newline included
    at_word_end: bool
    whole: bool


def _fragments(tokenizer: Any, candidates: list[str], *, keep_whole: bool = False) -> list[_Fragment]:
    """Every prefix of each candidate line that does not end in a space (the whole line only if `keep_whole`)."""
    cuts = [
        (line, cut)
        for line in candidates
        for cut in range(1, len(line) + (1 if keep_whole else 0))
        if not line[cut - 1].isspace()
    ]
    if not cuts:
        return []
    encoded = tokenizer(["\n" + line[:cut] for line, cut in cuts], add_special_tokens=False)["input_ids"]
    return [
        _Fragment(line[:cut], len(ids), cut == len(line) or line[cut].isspace(), cut == len(line))
        for (line, cut), ids in zip(cuts, encoded, strict=True)
    ]


def _fragment_pairs(trims: list[_Fragment], pads: list[_Fragment], target: int) -> list[tuple[_Fragment, _Fragment]]:
    """Pairs of a trimmed last line and a padding line costing `target` together, the least cut-looking first."""
    no_pad = _Fragment("", 0, True, True)
    best_pad: dict[int, _Fragment] = {0: no_pad}
    for pad in pads:
        held = best_pad.get(pad.cost)
        if held is None or _pad_rank(pad) > _pad_rank(held):
            best_pad[pad.cost] = pad
    pairs = [(trim, best_pad[target - trim.cost]) for trim in trims if target - trim.cost in best_pad]
    def rank(pair: tuple[_Fragment, _Fragment]) -> tuple[bool, bool, bool, bool, int, int]:
        trim, pad = pair
        return (trim.whole, pad is no_pad, trim.at_word_end, *_pad_rank(pad), len(trim.text))

    return sorted(pairs, key=rank, reverse=True)


def _pad_rank(pad: _Fragment) -> tuple[bool, int]:
    return pad.at_word_end, len(pad.text)
