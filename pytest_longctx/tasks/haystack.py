"""Needle-in-a-haystack prompts built to an exact token count, with the needle's token span and depth."""

from __future__ import annotations

import hashlib
import itertools
import random
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

SHIPPING_INSTRUCTIONS = (
    "Below is a warehouse shipping log. Read it carefully, then answer the question that follows it."
)
DOCUMENT_INSTRUCTIONS = "Below is a document. Read it carefully, then answer the question that follows it."
NO_TEMPLATE_SUFFIX = "\nAnswer:"
TOLERANCE = 0.01  # the count is exact whenever trimming can hit it; it is never off by more than this fraction

_CODE_WORDS = (
    "KESTREL", "OSPREY", "HERON", "FALCON", "MERLIN", "PLOVER", "SHRIKE", "TANAGER", "WARBLER", "CONDOR",
    "PEREGRINE", "KINGFISHER", "CORMORANT", "BITTERN", "AVOCET", "CURLEW", "DUNLIN", "GANNET", "HOOPOE",
    "LAPWING", "NIGHTJAR", "ORIOLE", "PIPIT", "REDSTART", "SANDERLING", "TURNSTONE", "WAGTAIL", "WHIMBREL",
    "BASALT", "COBALT", "GRANITE", "OBSIDIAN", "QUARTZ", "TOPAZ", "GARNET", "JASPER", "ONYX", "FELDSPAR",
)
_VAULTS = (
    "cold-storage vault", "east wing vault", "records vault", "bonded goods vault", "pharmacy vault",
    "archive vault", "north yard vault", "customs vault",
)
_CARRIERS = (
    "Northwind Freight", "Bluewater Logistics", "Redline Haulage", "Summit Carriers", "Prairie Express",
    "Harbor Line Transport", "Ironhorse Trucking", "Coastal Cargo", "Granite State Movers", "Lakeshore Freight",
    "Pioneer Distribution", "Silverline Logistics", "Keystone Transit", "Evergreen Haulers",
)
_CITIES = (
    "Denver", "Omaha", "Tulsa", "Memphis", "Columbus", "Spokane", "Boise", "Reno", "Fresno", "Wichita",
    "Toledo", "Albany", "Savannah", "Richmond", "Louisville", "Madison", "Duluth", "Lubbock", "Tacoma",
    "Akron", "Raleigh", "Dayton", "Provo", "Laredo",
)
_GOODS = (
    "canned tomatoes", "bicycle parts", "printer paper", "bottled water", "garden hoses", "ceramic tiles",
    "frozen peas", "laptop batteries", "dog food", "office chairs", "motor oil", "cotton towels",
)
_STATUSES = (
    "loaded", "unloaded", "departed", "arrived", "held for inspection", "delayed by weather",
    "rescheduled", "staged for pickup", "cross-docked", "weighed and sealed",
)


@dataclass(frozen=True)
class Needle:
    """The sentence hidden in the haystack, the question asked after it, and the string the answer must hold."""

    text: str
    question: str
    answer: str


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


def make_needle(seed: int) -> Needle:
    """A seeded needle such as "The override code for the cold-storage vault is KESTREL-4827."."""
    rng = random.Random(f"needle:{seed}")
    vault = rng.choice(_VAULTS)
    answer = f"{rng.choice(_CODE_WORDS)}-{rng.randint(1000, 9999)}"
    return Needle(
        text=f"The override code for the {vault} is {answer}.",
        question=f"What is the override code for the {vault}? Reply with the code only.",
        answer=answer,
    )


def filler_lines(seed: int) -> Iterator[str]:
    """An endless, seeded warehouse shipping log, one event per line (the 2024 dates wrap round after a year)."""
    rng = random.Random(f"filler:{seed}")
    minute = rng.randint(0, 365 * 24 * 60)
    while True:
        minute += rng.randint(1, 37)
        day, rest = divmod(minute, 24 * 60)
        month, dom = divmod(day % 336, 28)
        stamp = f"2024-{month + 1:02d}-{dom + 1:02d} {rest // 60:02d}:{rest % 60:02d}"
        origin, destination = rng.sample(_CITIES, 2)
        shipment = f"SH-{rng.randint(10000, 99999)}"
        dock, carrier, status = rng.randint(1, 24), rng.choice(_CARRIERS), rng.choice(_STATUSES)
        pallets = rng.randint(1, 40)
        shape = rng.random()
        if shape < 0.6:
            yield (
                f"{stamp} shipment {shipment} dock {dock} carrier {carrier} route {origin}-{destination} "
                f"{pallets} pallets {status}"
            )
        elif shape < 0.85:
            yield (
                f"{stamp} shipment {shipment} of {rng.choice(_GOODS)} ({pallets} pallets, "
                f"{rng.randint(300, 19000)} kg) {status} at dock {dock} by {carrier}"
            )
        else:
            trailer = f"TR-{rng.randint(100, 999)}"
            yield f"{stamp} dock {dock} inspection passed for {shipment}, trailer {trailer} to {destination}"


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


def make_needles(count: int, seed: int = 0) -> tuple[Needle, ...]:
    """`count` seeded needles about distinct vaults (at most one per vault), so each question has one answer."""
    if not 1 <= count <= len(_VAULTS):
        raise ValueError(f"count must be between 1 and {len(_VAULTS)}, got {count!r}")
    rng = random.Random(f"needles:{seed}")
    needles = []
    for vault in rng.sample(_VAULTS, count):
        answer = f"{rng.choice(_CODE_WORDS)}-{rng.randint(1000, 9999)}"
        needles.append(Needle(
            text=f"The override code for the {vault} is {answer}.",
            question=f"What is the override code for the {vault}? Reply with the code only.",
            answer=answer,
        ))
    return tuple(needles)


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
    builder = _Builder(tokenizer, instructions, needles, question, depths)
    source = filler_lines(seed) if filler is None else (line.rstrip("\r\n") for line in filler)
    lines = _LineSource(tokenizer, (line for line in source if line.strip()))

    minimum = builder.count([], builder.positions([]))
    if length < minimum:
        raise ValueError(
            f"length {length} is too small: the template, instructions, needle and question alone take "
            f"{minimum} tokens; use length >= {minimum}"
        )
    full, total = _fit_whole_lines(builder, lines, length, minimum)
    layout = _fit_partial_line(builder, lines, length, full, total)
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


class _Builder:
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


class _LineSource:
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


def _fit_whole_lines(builder: _Builder, lines: _LineSource, length: int, minimum: int) -> tuple[int, int]:
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


def _fit_partial_line(builder: _Builder, lines: _LineSource, length: int, full: int, total: int) -> _Layout:
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
