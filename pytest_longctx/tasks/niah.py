"""Needle-in-a-haystack families: today's vault code, and RULER's single, multi-key, multi-value and multi-query."""

from __future__ import annotations

import random
import re
from typing import Any

from .corpus import HaystackKind, ValueKind, haystack_lines, make_keys, make_values, similar_key, value_pattern
from .family import Family, Option
from .haystack import MultiHaystack, Needle, build_haystack, build_multi_haystack, make_needle
from .prompt import Scoring, TaskPrompt

CODE_PATTERN = r"[A-Z]+-\d{4}"
_CODE_WORDS = ("ALBATROSS", "BUZZARD", "EGRET", "GROUSE", "IBIS", "JACKDAW", "LINNET", "MAGPIE", "PUFFIN", "ROOK")
_BAND = 0.2  # several answer needles spread over this much of the haystack, centred on the depth


def build_niah(tokenizer: Any, *, length: int, depth: float, seed: int, near_misses: int = 0) -> TaskPrompt:
    """The original vault-code needle; without near misses exactly `build_haystack`'s prompt."""
    if near_misses == 0:
        haystack = build_haystack(tokenizer, length=length, depth=depth, seed=seed)
        return TaskPrompt(
            family="niah", prompt_text=haystack.prompt_text, token_ids=haystack.token_ids, length=length,
            depth=float(depth), seed=seed, question=haystack.needle.question, answers=(haystack.answer,),
            distractors=(), evidence_spans=(haystack.needle_span,), scoring="all", value_pattern=CODE_PATTERN,
            actual_depth=haystack.actual_depth,
        )
    needle = make_needle(seed)
    vault = re.fullmatch(r"The override code for the (.+) is .+\.", needle.text)
    assert vault is not None  # make_needle's fixed wording
    rng = random.Random(f"niah-near:{seed}")
    codes = [c for c in _codes(rng, near_misses + 1) if c != needle.answer][:near_misses]
    templates = (
        "The override code for the {vault} annex is {code}.",
        "The backup code for the {vault} is {code}.",
        "The old override code for the {vault}, retired last spring, was {code}.",
        "The override code for the {vault} loading bay is {code}.",
    )
    near = [
        Needle(templates[i % len(templates)].format(vault=vault.group(1), code=code), needle.question, code)
        for i, code in enumerate(codes)
    ]
    built = build_multi_haystack(
        tokenizer, length=length, needles=[needle, *near], depths=[depth, *(rng.random() for _ in near)],
        seed=seed, question=needle.question,
    )
    return _prompt("niah", built, depth, answers=1, scoring="all", pattern=CODE_PATTERN)


def build_niah_single(
    tokenizer: Any, *, length: int, depth: float, seed: int, value: ValueKind = "number",
    haystack: HaystackKind = "essay", near_misses: int = 0,
) -> TaskPrompt:
    """One "special magic" value for one key, as RULER's niah_single."""
    return _magic(tokenizer, "niah_single", length, depth, seed, value, haystack, near_misses, asked=1, per_key=1, others=0)


def build_niah_multikey(
    tokenizer: Any, *, length: int, depth: float, seed: int, distractors: int = 3, value: ValueKind = "number",
    haystack: HaystackKind = "essay", near_misses: int = 0,
) -> TaskPrompt:
    """One asked key among `distractors` other keys of the same form, each with its own value."""
    return _magic(
        tokenizer, "niah_multikey", length, depth, seed, value, haystack, near_misses, asked=1, per_key=1, others=distractors
    )


def build_niah_multivalue(
    tokenizer: Any, *, length: int, depth: float, seed: int, values: int = 4, value: ValueKind = "number",
    haystack: HaystackKind = "essay", near_misses: int = 0,
) -> TaskPrompt:
    """One key with `values` values, all of which must be returned."""
    return _magic(tokenizer, "niah_multivalue", length, depth, seed, value, haystack, near_misses, asked=1, per_key=values, others=0)


def build_niah_multiquery(
    tokenizer: Any, *, length: int, depth: float, seed: int, queries: int = 4, value: ValueKind = "number",
    haystack: HaystackKind = "essay", near_misses: int = 0,
) -> TaskPrompt:
    """`queries` keys asked at once, one value each."""
    return _magic(tokenizer, "niah_multiquery", length, depth, seed, value, haystack, near_misses, asked=queries, per_key=1, others=0)


def _magic(
    tokenizer: Any, family: str, length: int, depth: float, seed: int, value: ValueKind, haystack: HaystackKind,
    near_misses: int, *, asked: int, per_key: int, others: int,
) -> TaskPrompt:
    """RULER's needles: "One of the special magic numbers for fearless-otter is: 4817263." and their question."""
    rng = random.Random(f"{family}:{seed}")
    noun = {"number": "number", "word": "word", "uuid": "UUID"}[value]
    keys = make_keys(rng, asked + others)
    values = make_values(value, rng, asked * per_key + others + near_misses)
    sentence = "One of the special magic {noun}s for {key} is: {value}."
    targets = []
    for key in keys[:asked]:
        for _ in range(per_key):
            v = values.pop(0)
            targets.append(Needle(sentence.format(noun=noun, key=key, value=v), "", v))
    distractors = [
        Needle(sentence.format(noun=noun, key=key, value=v), "", v) for key, v in zip(keys[asked:], values[:others], strict=True)
    ]
    near_wording = (
        "One of the expired magic {noun}s for {key} was: {value}.",
        "One of the special magic {noun}s for {similar} is: {value}.",
        "One of the rejected magic {noun}s for {key} is: {value}.",
        "A special lucky {noun} for {key} is: {value}.",
    )
    near = []
    for i, v in enumerate(values[others:]):
        key = rng.choice(keys[:asked])
        similar = similar_key(key, rng, avoid=set(keys))
        text = near_wording[i % len(near_wording)].format(noun=noun, key=key, similar=similar, value=v)
        near.append(Needle(text, "", v))
    if len(targets) == 1:
        question = f"What is the special magic {noun} for {keys[0]} mentioned in the provided text? Reply with the {noun} only."
    else:
        about = keys[0] if asked == 1 else ", ".join(keys[: asked - 1]) + f" and {keys[asked - 1]}"
        question = (
            f"What are all the special magic {noun}s for {about} mentioned in the provided text? "
            f"Reply with the {noun}s only, separated by commas, on one line."
        )
    depths = _spread(depth, len(targets)) + [rng.random() for _ in distractors + near]
    built = build_multi_haystack(
        tokenizer, length=length, needles=targets + distractors + near, depths=depths, seed=seed,
        filler=haystack_lines(haystack, seed), question=question,
        instructions=(
            f"Some special magic {noun}s are hidden within the following text. Make sure to memorize them. "
            f"I will quiz you about the {noun}s afterwards."
        ),
    )
    scoring: Scoring = "all" if len(targets) == 1 else "part"
    return _prompt(family, built, depth, answers=len(targets), scoring=scoring, pattern=value_pattern(value))


def _spread(depth: float, count: int, band: float = _BAND) -> list[float]:
    """`count` depths evenly over a band of width `band` centred on `depth`, shifted to stay within [0, 1]."""
    if count == 1:
        return [float(depth)]
    low = min(max(depth - band / 2, 0.0), 1.0 - band)
    return [low + band * i / (count - 1) for i in range(count)]


def _prompt(family: str, built: MultiHaystack, depth: float, *, answers: int, scoring: Scoring, pattern: str) -> TaskPrompt:
    """The TaskPrompt of a multi-needle haystack whose first `answers` needles hold the expected values."""
    return TaskPrompt(
        family=family, prompt_text=built.prompt_text, token_ids=built.token_ids, length=built.length,
        depth=float(depth), seed=built.seed, question=built.question,
        answers=tuple(n.answer for n in built.needles[:answers]),
        distractors=tuple(n.answer for n in built.needles[answers:]),
        evidence_spans=built.needle_spans[:answers], scoring=scoring, value_pattern=pattern,
        actual_depth=built.actual_depths[0],
    )


def _codes(rng: random.Random, count: int) -> list[str]:
    codes: list[str] = []
    while len(codes) < count:
        code = f"{rng.choice(_CODE_WORDS)}-{rng.randint(1000, 9999)}"
        if code not in codes:
            codes.append(code)
    return codes


_VALUE = Option("value", "number", choices=("number", "word", "uuid"))
_HAYSTACK = Option("haystack", "essay", choices=("repeat", "logs", "essay"))
_NEAR = Option("near_misses", 0, low=0, high=16)

FAMILIES = (
    Family("niah", "the vault-code needle in a shipping log (today's prompts, unchanged)", (_NEAR,), build_niah),
    Family("niah_single", "one special magic value for one key", (_VALUE, _HAYSTACK, _NEAR), build_niah_single),
    Family(
        "niah_multikey", "one asked key among distractor keys of the same form",
        (Option("distractors", 3, low=1, high=32), _VALUE, _HAYSTACK, _NEAR), build_niah_multikey,
    ),
    Family(
        "niah_multivalue", "one key with several values, all to be returned",
        (Option("values", 4, low=2, high=16), _VALUE, _HAYSTACK, _NEAR), build_niah_multivalue,
    ),
    Family(
        "niah_multiquery", "several keys asked at once",
        (Option("queries", 4, low=2, high=16), _VALUE, _HAYSTACK, _NEAR), build_niah_multiquery,
    ),
)
