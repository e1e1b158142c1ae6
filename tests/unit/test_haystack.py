"""Needle-in-a-haystack prompts: exact token counts, needle span and depth, determinism, custom filler."""

from __future__ import annotations

import hashlib
import itertools
import re
import struct
import time

import pytest

from pytest_longctx.tasks.haystack import (
    Haystack,
    MultiHaystack,
    Needle,
    build_haystack,
    build_multi_haystack,
    filler_lines,
    make_needle,
    make_needles,
)

LENGTHS = [256, 1000, 4096]
DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.fixture(scope="module")
def plain_tokenizer():
    """A byte-level BPE trained in memory on the filler, with no chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(itertools.islice(filler_lines(12345), 2000), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    assert wrapped.chat_template is None
    return wrapped


@pytest.fixture(params=["smollm", "plain"])
def tokenizer(request):
    return request.getfixturevalue("smollm_tokenizer" if request.param == "smollm" else "plain_tokenizer")


def check_invariants(haystack: Haystack, tokenizer) -> None:
    assert list(haystack.token_ids) == tokenizer(haystack.prompt_text, add_special_tokens=False)["input_ids"]
    start, end = haystack.needle_span
    assert 0 <= start < end <= haystack.tokens
    assert haystack.answer in tokenizer.decode(list(haystack.token_ids[start:end]))
    assert f"\n{haystack.needle.text}\n" in haystack.prompt_text  # the needle is a line of its own
    assert haystack.prompt_text.count(haystack.answer) == 1
    if tokenizer.chat_template is None:
        assert haystack.prompt_text.endswith(f"\n\n{haystack.needle.question}\nAnswer:")
    else:
        assert f"\n\n{haystack.needle.question}" in haystack.prompt_text


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("depth", DEPTHS)
def test_prompt_has_exactly_the_requested_length(tokenizer, length, depth):
    haystack = build_haystack(tokenizer, length=length, depth=depth, seed=7)

    assert haystack.tokens == length
    assert (haystack.length, haystack.depth, haystack.seed) == (length, depth, 7)
    check_invariants(haystack, tokenizer)
    if depth in (0.0, 1.0):
        assert haystack.actual_depth == depth
    if length >= 1000:
        assert haystack.actual_depth == pytest.approx(depth, abs=0.05)


def test_needle_at_the_edges_is_the_first_or_last_haystack_line(smollm_tokenizer):
    first = build_haystack(smollm_tokenizer, length=600, depth=0.0)
    last = build_haystack(smollm_tokenizer, length=600, depth=1.0)

    assert f"\n\n{first.needle.text}\n" in first.prompt_text
    assert f"\n{last.needle.text}\n\n{last.needle.question}" in last.prompt_text


@pytest.mark.parametrize("length", [257, 1111, 2047, 3001, 32768])
def test_odd_and_long_lengths_are_exact(smollm_tokenizer, length):
    haystack = build_haystack(smollm_tokenizer, length=length, depth=0.5, seed=length)

    assert haystack.tokens == length
    check_invariants(haystack, smollm_tokenizer)


def test_chat_prompt_is_what_the_template_tokenizes_to(smollm_tokenizer):
    haystack = build_haystack(smollm_tokenizer, length=1000, depth=0.5)
    content = haystack.prompt_text.split("<|im_start|>user\n", 1)[1].rsplit("<|im_end|>", 1)[0]

    encoded = smollm_tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True
    )

    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    assert list(ids) == list(haystack.token_ids)
    assert haystack.prompt_text.endswith("<|im_start|>assistant\n")
    assert content.endswith(haystack.needle.question)


def test_without_a_chat_template_the_prompt_ends_with_answer(plain_tokenizer):
    haystack = build_haystack(plain_tokenizer, length=500, depth=0.5)

    assert haystack.prompt_text.endswith(f"\n\n{haystack.needle.question}\nAnswer:")
    assert haystack.prompt_text.startswith("Below is a warehouse shipping log.")


def test_same_arguments_give_the_same_tokens(smollm_tokenizer):
    one = build_haystack(smollm_tokenizer, length=1000, depth=0.3, seed=5)
    two = build_haystack(smollm_tokenizer, length=1000, depth=0.3, seed=5)

    assert one == two
    assert one.prompt_sha256 == two.prompt_sha256


def test_prompt_sha256_hashes_the_ids_as_little_endian_int32(smollm_tokenizer):
    haystack = build_haystack(smollm_tokenizer, length=300, depth=0.5)

    expected = hashlib.sha256(b"".join(i.to_bytes(4, "little", signed=True) for i in haystack.token_ids))
    assert haystack.prompt_sha256 == expected.hexdigest()
    packed = struct.pack(f"<{haystack.tokens}i", *haystack.token_ids)
    assert haystack.prompt_sha256 == hashlib.sha256(packed).hexdigest()


def test_seed_changes_filler_and_answer(smollm_tokenizer):
    one = build_haystack(smollm_tokenizer, length=1000, depth=0.5, seed=1)
    two = build_haystack(smollm_tokenizer, length=1000, depth=0.5, seed=2)

    assert one.answer != two.answer
    assert one.prompt_sha256 != two.prompt_sha256
    assert set(one.prompt_text.splitlines()[5:15]).isdisjoint(two.prompt_text.splitlines())


def test_make_needle_is_seeded_and_well_formed():
    needles = [make_needle(seed) for seed in range(50)]

    assert make_needle(3) == make_needle(3)
    assert len({needle.answer for needle in needles}) == 50
    for needle in needles:
        assert re.fullmatch(r"[A-Z]+-\d{4}", needle.answer)
        assert needle.text.startswith("The override code for the ") and needle.text.endswith(f" is {needle.answer}.")
        assert needle.question.startswith("What is the override code for the ")
        assert needle.question.endswith("? Reply with the code only.")
    assert make_needle(0).answer not in make_needle(0).question


def test_filler_is_seeded_varied_and_never_mentions_the_needle():
    lines = list(itertools.islice(filler_lines(0), 5000))

    assert lines[:100] == list(itertools.islice(filler_lines(0), 100))
    assert lines[:100] != list(itertools.islice(filler_lines(1), 100))
    assert len(set(lines)) == len(lines)
    assert all("\n" not in line and line.strip() == line for line in lines)
    assert not [line for line in lines if "override code" in line.lower() or "vault" in line.lower()]
    assert len({re.search(r"dock (\d+)", line).group(1) for line in lines}) > 10
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d ", line) for line in lines)


def test_too_small_a_length_names_the_minimum(tokenizer):
    with pytest.raises(ValueError, match=r"length 20 is too small.*length >= (\d+)") as raised:
        build_haystack(tokenizer, length=20, depth=0.5)
    minimum = int(re.search(r"length >= (\d+)", str(raised.value)).group(1))

    smallest = build_haystack(tokenizer, length=minimum, depth=0.5)

    assert smallest.tokens == minimum
    assert smallest.actual_depth == 0.0
    with pytest.raises(ValueError, match="too small"):
        build_haystack(tokenizer, length=minimum - 1, depth=0.5)


@pytest.mark.parametrize("depth", [-0.1, 1.5])
def test_depth_outside_zero_to_one_is_rejected(smollm_tokenizer, depth):
    with pytest.raises(ValueError, match="depth must be between 0.0 and 1.0"):
        build_haystack(smollm_tokenizer, length=500, depth=depth)


DOCUMENT = [f"Paragraph {i}: the river bends past mill number {i} before it reaches the sea." for i in range(400)]


def test_custom_filler_is_used_in_order(tokenizer):
    haystack = build_haystack(tokenizer, length=1000, depth=0.5, filler=iter(DOCUMENT))

    assert haystack.tokens == 1000
    check_invariants(haystack, tokenizer)
    assert "Below is a document." in haystack.prompt_text
    assert "shipment" not in haystack.prompt_text
    assert f"\n\n{DOCUMENT[0]}\n{DOCUMENT[1]}\n" in haystack.prompt_text


def test_too_short_custom_filler_says_how_much_it_holds(smollm_tokenizer):
    with pytest.raises(ValueError, match=r"the filler holds about \d+ tokens but a 4096-token prompt needs \d+"):
        build_haystack(smollm_tokenizer, length=4096, depth=0.5, filler=DOCUMENT[:20])


def test_custom_needle_and_instructions(smollm_tokenizer):
    needle = Needle(text="The magic number is 7319.", question="What is the magic number?", answer="7319")

    haystack = build_haystack(smollm_tokenizer, length=800, depth=0.25, needle=needle, instructions="Read this.")

    assert haystack.tokens == 800
    assert haystack.needle == needle
    assert "Read this.\n\n" in haystack.prompt_text
    check_invariants(haystack, smollm_tokenizer)


def test_answer_already_in_the_filler_is_rejected(smollm_tokenizer):
    needle = Needle(text="The secret is Paragraph 3.", question="What is the secret?", answer="Paragraph 3")

    with pytest.raises(ValueError, match="also occurs in the filler"):
        build_haystack(smollm_tokenizer, length=600, depth=0.5, needle=needle, filler=DOCUMENT)


def test_a_4096_token_prompt_builds_quickly(smollm_tokenizer):
    build_haystack(smollm_tokenizer, length=256, depth=0.5)  # warm up

    started = time.perf_counter()
    haystack = build_haystack(smollm_tokenizer, length=4096, depth=0.5, seed=11)
    elapsed = time.perf_counter() - started

    assert haystack.tokens == 4096
    assert elapsed < 2.0


# Prompts recorded before multi-needle support: captured baselines compare prompt_sha256, so these must not move.
PINNED = [
    (dict(length=1000, depth=0.5, seed=0), "ddfd4cab1b7587cc9883aa5170cb84f85f7b684c5bff2b504a930369eb6fa5e9", (520, 536)),
    (dict(length=4096, depth=0.25, seed=1), "bf49d6bc048ce2b687432b96a48090ffc7dafcab8481d4c4dc04180a0be79f68", (1042, 1059)),
]


@pytest.mark.parametrize(("kwargs", "sha256", "span"), PINNED)
def test_single_needle_prompts_are_unchanged(smollm_tokenizer, kwargs, sha256, span):
    haystack = build_haystack(smollm_tokenizer, **kwargs)

    assert (haystack.prompt_sha256, haystack.needle_span) == (sha256, span)


def test_make_needles_asks_about_distinct_vaults():
    needles = make_needles(8, seed=3)

    assert needles == make_needles(8, seed=3) and needles != make_needles(8, seed=4)
    assert len({n.question for n in needles}) == 8 and len({n.answer for n in needles}) == 8
    with pytest.raises(ValueError, match="between 1 and 8"):
        make_needles(9)


@pytest.mark.parametrize("depths", [(0.0, 0.5, 1.0), (0.8, 0.2, 0.5), (0.5, 0.5, 0.5)])
def test_multi_needle_places_each_needle_at_its_depth(tokenizer, depths):
    needles = make_needles(3, seed=1)

    haystack = build_multi_haystack(tokenizer, length=1200, needles=needles, depths=depths, seed=2)

    assert isinstance(haystack, MultiHaystack)
    assert haystack.tokens == 1200
    assert list(haystack.token_ids) == tokenizer(haystack.prompt_text, add_special_tokens=False)["input_ids"]
    assert haystack.answers == tuple(n.answer for n in needles)
    for needle, (start, end), wanted, actual in zip(needles, haystack.needle_spans, depths, haystack.actual_depths, strict=True):
        assert needle.answer in tokenizer.decode(list(haystack.token_ids[start:end]))
        assert f"\n{needle.text}\n" in haystack.prompt_text
        assert actual == pytest.approx(wanted, abs=0.05)
    order = sorted(range(3), key=lambda i: (depths[i], i))  # same boundary: the given order
    assert [haystack.needle_spans[i][0] for i in order] == sorted(s for s, _ in haystack.needle_spans)
    assert haystack.prompt_text.count(needles[0].question) == 1
    assert haystack.found(f"{needles[2].answer} and {needles[0].answer}") == (True, False, True)


def test_multi_needle_takes_a_custom_question_and_filler(smollm_tokenizer):
    needles = [Needle("Mill 1001 grinds oats.", "x", "oats"), Needle("Mill 1002 grinds rye.", "y", "rye")]

    haystack = build_multi_haystack(
        smollm_tokenizer, length=900, needles=needles, depths=[0.25, 0.75], filler=DOCUMENT,
        question="Which grains do mills 1001 and 1002 grind?",
    )

    assert haystack.tokens == 900
    assert haystack.question == "Which grains do mills 1001 and 1002 grind?"
    assert haystack.prompt_text.count("Which grains") == 1 and "Below is a document." in haystack.prompt_text


def test_multi_needle_rejects_mismatched_depths_and_repeated_answers(smollm_tokenizer):
    needles = make_needles(2)
    with pytest.raises(ValueError, match="one depth per needle"):
        build_multi_haystack(smollm_tokenizer, length=600, needles=needles, depths=[0.5])
    with pytest.raises(ValueError, match="distinct"):
        build_multi_haystack(smollm_tokenizer, length=600, needles=[needles[0], needles[0]], depths=[0.1, 0.9])
    with pytest.raises(ValueError, match="depth must be between"):
        build_multi_haystack(smollm_tokenizer, length=600, needles=needles, depths=[0.1, 1.5])
