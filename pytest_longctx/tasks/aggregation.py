"""Aggregation over the whole context: the most common words of a list, the most frequent coded words of a text."""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from .corpus import ADJECTIVES, ADVERBS, NOUNS, coded_words
from .family import Family, Option
from .haystack import Haystack, Needle, build_haystack
from .prompt import TaskPrompt, token_span

_ATTEMPTS = 5
_WORDS_PER_LINE = 10


def build_common_words(tokenizer: Any, *, length: int, depth: float, seed: int, top_k: int = 10) -> TaskPrompt:
    """A numbered list of words in which `top_k` words each appear more often than any other (RULER's cwe).

    The list comes in rounds: each round holds every common word once and some uncommon words, cycled
    so each appears far less often. The answer is the `top_k` most counted words of the built prompt.
    """
    question = (
        f"What are the {top_k} most common words in the above list? "
        "Reply with the words only, separated by commas, on one line."
    )
    instructions = (
        "Below is a numbered list of words. In these words, some appear more often than others. "
        "Memorize the ones that appear most often."
    )

    def entries(rng: random.Random, per_round: int) -> Iterator[str]:
        vocabulary = list(NOUNS + ADJECTIVES + ADVERBS)
        rng.shuffle(vocabulary)
        common, uncommon = vocabulary[:top_k], itertools.cycle(vocabulary[top_k:])
        # Uncommon words per round: up to twice the common ones, fewer when the list is short, so the
        # common words still get at least three rounds.
        extra = min(2 * top_k, max(0, per_round - top_k))
        number = itertools.count(1)
        while True:
            round_words = common + [next(uncommon) for _ in range(extra)]
            rng.shuffle(round_words)
            yield from (f"{next(number)}. {word}" for word in round_words)

    return _aggregate(
        tokenizer, "common_words", length, depth, seed, top_k, entries, header="Word list:",
        instructions=instructions, question=question, vocabulary=NOUNS + ADJECTIVES + ADVERBS, per_line=1,
    )


def build_frequent_words(tokenizer: Any, *, length: int, depth: float, seed: int, top_k: int = 3) -> TaskPrompt:
    """Coded nonsense words with Zipf-like frequencies; the answer is the `top_k` most frequent (RULER's fwe).

    Words are drawn in blocks: the rank-r word of the top `top_k` appears ceil(2(top_k+1)/r) times per block
    (at least three), and as many tail words fill the rest, each at most once every other block.
    """
    vocabulary = coded_words(random.Random(f"frequent_words-vocabulary:{seed}"), 400)
    question = (
        f"What are the {top_k} most frequent coded words in the above coded text? "
        "Reply with the words only, separated by commas, on one line."
    )
    instructions = (
        "Read the following coded text and track the frequency of each coded word. "
        f"Find the {top_k} most frequently appearing coded words."
    )
    counts = [-(-2 * (top_k + 1) // r) for r in range(1, top_k + 1)]

    def entries(rng: random.Random, per_round: int) -> Iterator[str]:  # blocks have a fixed size: per_round unused
        words = list(vocabulary)
        rng.shuffle(words)
        top, tail_count = words[:top_k], sum(counts)
        tail = itertools.cycle(words[top_k : top_k + 2 * tail_count + 1])
        while True:
            block = [w for w, n in zip(top, counts, strict=True) for _ in range(n)] + [next(tail) for _ in range(tail_count)]
            rng.shuffle(block)
            yield from block

    return _aggregate(
        tokenizer, "frequent_words", length, depth, seed, top_k, entries, header="Coded text:",
        instructions=instructions, question=question, vocabulary=tuple(vocabulary), per_line=_WORDS_PER_LINE,
    )


def _aggregate(
    tokenizer: Any, family: str, length: int, depth: float, seed: int, top_k: int,
    entries: Callable[[random.Random, int], Iterator[str]], *, header: str, instructions: str, question: str,
    vocabulary: tuple[str, ...], per_line: int,
) -> TaskPrompt:
    """Fill the prompt with `entries` after a header line, then count: the answers are the `top_k` most counted.

    The header is the haystack's needle at depth 0.0, so the token-exact fitting of `build_haystack` is
    reused as is. Trimming the last line to hit the length can only lower counts by a round's worth; a tie
    at the cut-off is retried with another shuffle (deterministic in the seed) and raises if it persists.
    """
    estimate = _entries_that_fit(tokenizer, length, instructions + question, entries, per_line)
    for attempt in range(_ATTEMPTS):
        rng = random.Random(f"{family}:{seed}:{attempt}")
        # Common words get at least three rounds in the estimated list.
        per_round = max(top_k, estimate // 3)
        stream = entries(rng, per_round)
        lines = (" ".join(itertools.islice(stream, per_line)) for _ in itertools.count())
        haystack = build_haystack(
            tokenizer, length=length, depth=0.0, seed=seed, needle=Needle(header, question, header),
            filler=lines, instructions=instructions,
        )
        start = haystack.prompt_text.index(header) + len(header)
        end = haystack.prompt_text.index("\n\n" + question, start)
        ranked = Counter(re.findall(r"[a-z]+", haystack.prompt_text[start:end])).most_common()
        if len(ranked) > top_k and ranked[top_k - 1][1] > ranked[top_k][1]:
            return _prompt(family, tokenizer, haystack, length, depth, seed, ranked, top_k, end, vocabulary)
    raise ValueError(
        f"length {length} is too short to rank {top_k} words with a clear margin; use a longer length or a smaller top_k"
    )


def _entries_that_fit(
    tokenizer: Any, length: int, framing: str, entries: Callable[[random.Random, int], Iterator[str]], per_line: int,
) -> int:
    """About how many entries fit: the length less the framing, over a sample's tokens per entry."""
    sample = list(itertools.islice(entries(random.Random(0), 1_000), 200))
    lines = [" ".join(sample[i : i + per_line]) for i in range(0, len(sample), per_line)]
    tokens = sum(len(ids) + 1 for ids in tokenizer(lines, add_special_tokens=False)["input_ids"])
    framing_tokens = len(tokenizer(framing, add_special_tokens=False)["input_ids"]) + 32  # the chat template
    return max(0, (length - framing_tokens) * len(sample) // tokens)


def _prompt(
    family: str, tokenizer: Any, haystack: Haystack, length: int, depth: float, seed: int,
    ranked: list[tuple[str, int]], top_k: int, end: int, vocabulary: tuple[str, ...],
) -> TaskPrompt:
    words = [word for word, _ in ranked]
    start = haystack.needle_span[0]
    return TaskPrompt(
        family=family, prompt_text=haystack.prompt_text, token_ids=haystack.token_ids, length=length,
        depth=float(depth), seed=seed, question=haystack.needle.question, answers=tuple(words[:top_k]),
        distractors=tuple(w for w in words[top_k:] if w in vocabulary),
        evidence_spans=((start, token_span(tokenizer, haystack.prompt_text, 0, end)[1]),),
        scoring="part", value_pattern="(?i:" + "|".join(sorted(vocabulary, key=len, reverse=True)) + ")",
    )


FAMILIES = (
    Family(
        "common_words", "the most common words of a numbered word list",
        (Option("top_k", 10, low=1, high=50),), build_common_words, uses_depth=False,
    ),
    Family(
        "frequent_words", "the most frequent words of a coded text",
        (Option("top_k", 3, low=1, high=20),), build_frequent_words, uses_depth=False,
    ),
)
