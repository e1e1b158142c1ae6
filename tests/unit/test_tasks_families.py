"""Every task family: token-exact lengths, answers inside their evidence spans, distractors, determinism, depth."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from pytest_longctx.tasks import FAMILIES, TaskPrompt, build_task, parse_task, uses_depth
from pytest_longctx.tasks.haystack import build_haystack

LENGTHS = [512, 1024, 2048]
SEEDS = [0, 1, 2]
VARIANTS = [
    {"family": "niah", "near_misses": 3},
    {"family": "niah_single", "value": "word", "haystack": "repeat"},
    {"family": "niah_single", "value": "uuid", "haystack": "logs", "near_misses": 2},
    {"family": "niah_multikey", "distractors": 6, "value": "uuid", "haystack": "repeat"},
    {"family": "niah_multivalue", "values": 3, "value": "word", "haystack": "logs", "near_misses": 4},
    {"family": "niah_multiquery", "queries": 2, "haystack": "repeat"},
    {"family": "variable_tracking", "chains": 3, "hops": 5, "haystack": "essay"},
    {"family": "common_words", "top_k": 5},
    {"family": "frequent_words", "top_k": 5},
    {"family": "multi_doc_qa", "documents": 5, "near_misses": 4},
]

_built: dict[tuple[str, int, float, int], TaskPrompt] = {}


@pytest.fixture
def build(smollm_tokenizer):
    """Build (and remember, since several tests look at the same prompts) a task's prompt."""

    def build(raw, length: int, depth: float = 0.5, seed: int = 0) -> TaskPrompt:
        spec = parse_task(raw)
        key = (spec.name, length, depth, seed)
        if key not in _built:
            _built[key] = build_task(smollm_tokenizer, spec, length=length, depth=depth, seed=seed)
        return _built[key]

    return build


def check_invariants(prompt: TaskPrompt, tokenizer) -> None:
    assert abs(prompt.tokens - prompt.length) <= 0.01 * prompt.length
    assert list(prompt.token_ids) == tokenizer(prompt.prompt_text, add_special_tokens=False)["input_ids"]
    assert prompt.answers and len(set(prompt.answers)) == len(prompt.answers)
    assert not set(prompt.answers) & set(prompt.distractors)
    evidence = [tokenizer.decode(list(prompt.token_ids[start:end])) for start, end in prompt.evidence_spans]
    for start, end in prompt.evidence_spans:
        assert 0 <= start < end <= prompt.tokens
    for answer in prompt.answers:
        assert any(answer in text for text in evidence), f"{answer!r} is in no evidence span"
    for value in prompt.distractors:
        assert value in prompt.prompt_text
    assert prompt.needle_start == min(start for start, _ in prompt.evidence_spans)
    assert prompt.question in prompt.prompt_text


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_is_token_exact_with_answers_in_their_evidence(build, smollm_tokenizer, family, length, seed):
    prompt = build(family, length, seed=seed)

    check_invariants(prompt, smollm_tokenizer)
    assert prompt.tokens == length  # within 1% is the contract; every default family hits the count exactly
    assert (prompt.family, prompt.length, prompt.seed) == (family, length, seed)


@pytest.mark.parametrize("raw", VARIANTS, ids=lambda raw: parse_task(raw).name)
def test_option_variants_keep_the_invariants(build, smollm_tokenizer, raw):
    prompt = build(raw, 1024, seed=1)

    check_invariants(prompt, smollm_tokenizer)
    assert prompt.family == raw["family"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_same_seed_same_tokens_other_seed_other_values(build, smollm_tokenizer, family):
    spec = parse_task(family)
    first = build(family, 1024, seed=0)
    again = build_task(smollm_tokenizer, spec, length=1024, depth=0.5, seed=0)
    other = build(family, 1024, seed=1)

    assert again == first and again.prompt_sha256 == first.prompt_sha256
    assert other.prompt_sha256 != first.prompt_sha256
    assert other.answers != first.answers


def test_niah_is_todays_build_haystack_prompt(build, smollm_tokenizer):
    for length, depth, seed in [(1000, 0.5, 0), (777, 0.0, 3)]:
        haystack = build_haystack(smollm_tokenizer, length=length, depth=depth, seed=seed)
        prompt = build("niah", length, depth, seed)

        assert (prompt.prompt_sha256, prompt.evidence_spans) == (haystack.prompt_sha256, (haystack.needle_span,))
        assert (prompt.answer, prompt.needle_start, prompt.actual_depth) == (
            haystack.answer, haystack.needle_span[0], haystack.actual_depth)
    # The pin of test_haystack.py, reached through the registry.
    assert build("niah", 1000).prompt_sha256 == "ddfd4cab1b7587cc9883aa5170cb84f85f7b684c5bff2b504a930369eb6fa5e9"


@pytest.mark.parametrize("family", sorted(f for f in FAMILIES if FAMILIES[f].uses_depth))
def test_evidence_follows_depth(build, family):
    shallow, deep = build(family, 1024, 0.0), build(family, 1024, 1.0)

    assert uses_depth(parse_task(family))
    assert shallow.needle_start < deep.needle_start
    assert shallow.actual_depth is not None and deep.actual_depth is not None
    assert shallow.actual_depth < 0.15 and deep.actual_depth > 0.75  # several answers spread over the last fifth
    assert shallow.answers == deep.answers  # only the position moves


@pytest.mark.parametrize("family", sorted(f for f in FAMILIES if not FAMILIES[f].uses_depth))
def test_families_without_depth_ignore_it(build, family):
    shallow, deep = build(family, 1024, 0.0), build(family, 1024, 1.0)

    assert not uses_depth(parse_task(family))
    assert shallow.token_ids == deep.token_ids
    assert (shallow.depth, deep.depth) == (0.0, 1.0)


def test_niah_single_hides_one_value_of_the_asked_form(build):
    for value, form in [("number", r"\d{7}"), ("word", r"[a-z]+"), ("uuid", r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}")]:
        prompt = build({"family": "niah_single", "value": value}, 1024, seed=2)
        (answer,) = prompt.answers

        assert re.fullmatch(form, answer)
        assert prompt.prompt_text.count(answer) == 1
        key = re.search(r"special magic \w+ for (\S+) mentioned", prompt.question)
        assert key and f"for {key.group(1)} is: {answer}." in prompt.prompt_text


def test_haystack_kinds_differ(build):
    repeat = build({"family": "niah_single", "haystack": "repeat"}, 1024)
    logs = build({"family": "niah_single", "haystack": "logs"}, 1024)
    essay = build("niah_single", 1024)

    assert repeat.prompt_text.count("The grass is green.") > 20
    assert "shipment SH-" in logs.prompt_text
    body = essay.prompt_text.split("afterwards.\n\n", 1)[1].split("\n\n")[0]
    words = re.findall(r"[a-z]+", body.lower())
    assert len(set(words)) > 150 and len(set(body.split("\n"))) > 10  # varied prose, not one repeated line


def test_multikey_distractors_are_other_keys_with_values_of_the_same_form(build):
    prompt = build({"family": "niah_multikey", "distractors": 5}, 2048, seed=1)
    asked = re.search(r"for (\S+) mentioned", prompt.question).group(1)
    keys = re.findall(r"special magic numbers for (\S+) is: (\d{7})\.", prompt.prompt_text)

    assert len(keys) == 6 and len({k for k, _ in keys}) == 6
    assert dict(keys)[asked] == prompt.answer
    assert sorted(v for k, v in keys if k != asked) == sorted(prompt.distractors)


def test_multivalue_returns_every_value_of_one_key(build):
    prompt = build({"family": "niah_multivalue", "values": 5}, 2048)
    key = re.search(r"for (\S+) mentioned", prompt.question).group(1)

    assert len(prompt.answers) == 5 and prompt.scoring == "part"
    assert sorted(re.findall(rf"for {key} is: (\d{{7}})\.", prompt.prompt_text)) == sorted(prompt.answers)


def test_multiquery_asks_every_key_at_once(build):
    prompt = build({"family": "niah_multiquery", "queries": 3}, 2048)
    pairs = dict(re.findall(r"special magic numbers for (\S+) is: (\d{7})\.", prompt.prompt_text))

    assert len(pairs) == 3
    assert all(key in prompt.question for key in pairs)
    assert sorted(pairs.values()) == sorted(prompt.answers)


def test_near_misses_read_alike_but_hold_wrong_values(build):
    prompt = build({"family": "niah_single", "near_misses": 4}, 2048, seed=3)
    key = re.search(r"for (\S+) mentioned", prompt.question).group(1)
    adjective, noun = key.split("-")
    lines = [line for line in prompt.prompt_text.split("\n") if any(v in line for v in prompt.distractors)]

    assert len(prompt.distractors) == 4 and len(lines) == 4
    for line in lines:
        assert "magic" in line or "lucky" in line
        assert adjective in line or noun in line  # about the asked key or one sharing a word with it
        assert f"special magic numbers for {key} is:" not in line
    assert prompt.score(f"It is {prompt.distractors[0]}.", hit_limit=False).failure == "wrong_value"


def test_niah_near_misses_ask_todays_question(build):
    plain, near = build("niah", 1024, seed=4), build({"family": "niah", "near_misses": 2}, 1024, seed=4)
    vault = re.search(r"override code for the (.+)\?", plain.question).group(1)

    assert near.question == plain.question and near.answers == plain.answers
    assert all(vault in line for line in near.prompt_text.split("\n") if any(v in line for v in near.distractors))


def test_variable_tracking_answers_are_every_variable_bound_to_the_value(build):
    prompt = build({"family": "variable_tracking", "chains": 3, "hops": 4}, 2048, seed=2)
    value = re.search(r"assigned the value (\d+)", prompt.question).group(1)
    bound = dict(re.findall(r"^VAR ([A-Z]{5}) = (?:VAR )?(\w+)$", prompt.prompt_text, re.MULTILINE))

    def resolve(name: str) -> str:
        while name in bound:
            name = bound[name]
        return name

    assert len(bound) == 15
    assert sorted(n for n in bound if resolve(n) == value) == sorted(prompt.answers)
    assert len(prompt.answers) == 5 and len(prompt.distractors) == 10
    assert len(prompt.evidence_spans) == 5 and prompt.scoring == "part"


@pytest.mark.parametrize("family", ["common_words", "frequent_words"])
@pytest.mark.parametrize("length", [512, 2048])
def test_aggregation_answers_are_the_strict_top_k(build, smollm_tokenizer, family, length):
    prompt = build(family, length, seed=1)
    start, end = prompt.evidence_spans[0]
    counts = Counter(re.findall(r"[a-z]+", smollm_tokenizer.decode(list(prompt.token_ids[start:end])).split(":", 1)[1]))
    top_k = parse_task(family).option("top_k")

    assert len(prompt.answers) == top_k
    assert min(counts[a] for a in prompt.answers) > max(n for w, n in counts.items() if w not in prompt.answers)
    assert set(prompt.distractors) <= set(counts) and prompt.scoring == "part"


def test_aggregation_too_short_for_top_k_says_so(smollm_tokenizer):
    with pytest.raises(ValueError, match="too short to rank 50 words"):
        build_task(smollm_tokenizer, parse_task({"family": "common_words", "top_k": 50}), length=256, depth=0.5, seed=0)
