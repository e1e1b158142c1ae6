"""Variable tracking: chains of `VAR X = VAR Y` assignments spread through a haystack (RULER's vt)."""

from __future__ import annotations

import itertools
import random
import string
from typing import Any

from .corpus import HaystackKind, haystack_lines
from .family import Family, Option
from .haystack import Needle, build_multi_haystack
from .prompt import TaskPrompt

NAME_PATTERN = r"[A-Z]{5}"


def build_variable_tracking(
    tokenizer: Any, *, length: int, depth: float, seed: int, chains: int = 1, hops: int = 4,
    haystack: HaystackKind = "repeat",
) -> TaskPrompt:
    """`chains` chains of `hops` assignments after binding a five-digit value; asks for every variable of the first.

    Each chain's lines sit in order at evenly spaced depths with a seeded offset, so the chains interleave;
    `depth` is recorded but does not move them (the evidence spans the whole context).
    """
    rng = random.Random(f"variable_tracking:{seed}")
    names = _names(rng, chains * (hops + 1))
    values = [str(v) for v in rng.sample(range(10_000, 100_000), chains)]
    needles: list[Needle] = []
    depths: list[float] = []
    for c in range(chains):
        chain = names[c * (hops + 1) : (c + 1) * (hops + 1)]
        lines = [f"VAR {chain[0]} = {values[c]}"] + [f"VAR {b} = VAR {a}" for a, b in itertools.pairwise(chain)]
        offset = rng.random()
        # The line itself is the needle's "answer": it occurs once, while each name occurs on two lines.
        needles.extend(Needle(line, "", line) for line in lines)
        depths.extend((hop + offset) / (hops + 1) for hop in range(hops + 1))
    question = (
        f"Find all variables that are assigned the value {values[0]} in the text above, directly or through "
        "other variables. Reply with the variable names only, separated by commas, on one line."
    )
    built = build_multi_haystack(
        tokenizer, length=length, needles=needles, depths=depths, seed=seed, filler=haystack_lines(haystack, seed),
        question=question,
        instructions="Memorize and track the chains of variable assignments hidden in the following text.",
    )
    return TaskPrompt(
        family="variable_tracking", prompt_text=built.prompt_text, token_ids=built.token_ids, length=length,
        depth=float(depth), seed=seed, question=question, answers=tuple(names[: hops + 1]),
        distractors=tuple(names[hops + 1 :]), evidence_spans=built.needle_spans[: hops + 1], scoring="part",
        value_pattern=NAME_PATTERN,
    )


def _names(rng: random.Random, count: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in names:
            names.append(name)
    return names


FAMILIES = (
    Family(
        "variable_tracking", "chains of variable assignments; name every variable bound to the value",
        (Option("chains", 1, low=1, high=16), Option("hops", 4, low=1, high=32),
         Option("haystack", "repeat", choices=("repeat", "logs", "essay"))),
        build_variable_tracking, uses_depth=False,
    ),
)
