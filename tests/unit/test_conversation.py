"""Seeded multi-turn conversations: exact token counts through the real chat template, the fact's placement."""

from __future__ import annotations

import pytest

from pytest_longctx.tasks.conversation import Conversation, Turn, build_conversation, render


class WordTokenizer:
    """One token per whitespace-separated word, and no chat template: exercises the plain-text rendering."""

    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [len(word) for word in text.split()]}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("length", [512, 1024, 2048])
def test_rendered_length_is_within_one_percent_of_the_request(smollm_tokenizer, length, seed):
    conversation = build_conversation(smollm_tokenizer, length=length, depth=0.5, seed=seed)

    _, ids = render(smollm_tokenizer, conversation)

    assert abs(len(ids) - length) <= 0.01 * length


def test_rendered_length_is_exact_when_words_can_hit_it(smollm_tokenizer):
    for length in (777, 1024, 1500):
        _, ids = render(smollm_tokenizer, build_conversation(smollm_tokenizer, length=length, depth=0.3, seed=4))
        assert len(ids) == length


def test_render_goes_through_the_chat_template_and_ends_on_the_assistant_cue(smollm_tokenizer):
    conversation = build_conversation(smollm_tokenizer, length=512, depth=0.5, seed=0)

    text, ids = render(smollm_tokenizer, conversation)

    assert text.startswith(f"<|im_start|>system\n{conversation.system}<|im_end|>")
    assert text.endswith(f"<|im_start|>user\n{conversation.question}<|im_end|>\n<|im_start|>assistant\n")
    assert list(ids) == smollm_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_turns_alternate_in_whole_pairs_and_the_fact_is_stated_once(smollm_tokenizer):
    conversation = build_conversation(smollm_tokenizer, length=1024, depth=0.4, seed=1)
    text, _ = render(smollm_tokenizer, conversation)

    assert [t.role for t in conversation.turns] == ["user", "assistant"] * conversation.pairs
    assert conversation.fact_turn is not None
    assert conversation.turns[conversation.fact_turn] == Turn("user", conversation.fact)
    assert conversation.answer in conversation.fact
    assert text.count(conversation.answer) == 1
    assert conversation.fact.startswith("Note: the ") and conversation.answer in conversation.fact
    assert "mentioned earlier" in conversation.question


def test_depth_sweeps_the_fact_from_the_first_pair_to_the_last(smollm_tokenizer):
    by_depth = {d: build_conversation(smollm_tokenizer, length=1024, depth=d, seed=0) for d in (0.0, 0.25, 0.5, 1.0)}

    assert by_depth[0.0].fact_turn == 0
    last = by_depth[1.0]
    assert last.fact_turn == len(last.turns) - 2  # the last pair: only its acknowledgement precedes the question
    turns = [by_depth[d].fact_turn for d in (0.0, 0.25, 0.5, 1.0)]
    assert turns == sorted(turns) and len(set(turns)) == 4
    middle = by_depth[0.5]
    assert middle.fact_depth == pytest.approx(0.5, abs=1 / (middle.pairs - 1))


def test_same_seed_builds_the_same_conversation_and_another_seed_does_not(smollm_tokenizer):
    first = build_conversation(smollm_tokenizer, length=512, depth=0.5, seed=2)

    assert build_conversation(smollm_tokenizer, length=512, depth=0.5, seed=2) == first
    other = build_conversation(smollm_tokenizer, length=512, depth=0.5, seed=3)
    assert other.turns != first.turns and other.answer != first.answer


def test_a_longer_conversation_continues_the_shorter_one(smollm_tokenizer):
    # Each filler pair has its own seed, so cells of one seed at different lengths share their early turns.
    short = build_conversation(smollm_tokenizer, length=512, depth=0.0, seed=0)
    long = build_conversation(smollm_tokenizer, length=1024, depth=0.0, seed=0)

    assert long.system == short.system and long.answer == short.answer
    assert long.turns[: len(short.turns) - 1] == short.turns[:-1]  # all but the padded reply
    # The padded reply is cut from, or continues, the same reply (its last word may be a short filler word).
    padded, natural = short.turns[-1].content.split()[:-1], long.turns[len(short.turns) - 1].content.split()
    assert padded[: len(natural)] == natural[: len(padded)]


def test_a_length_below_the_fixed_parts_names_the_minimum(smollm_tokenizer):
    with pytest.raises(ValueError, match=r"length 40 is too small: .* take \d+ tokens; use length >= \d+"):
        build_conversation(smollm_tokenizer, length=40, depth=0.5)


@pytest.mark.parametrize("bad", [{"length": 0}, {"length": 512.0}, {"length": True}, {"depth": 1.5}, {"depth": -0.1}])
def test_bad_length_or_depth_is_refused(bad):
    settings = {"length": 512, "depth": 0.5, **bad}
    with pytest.raises(ValueError, match="length|depth"):
        build_conversation(WordTokenizer(), **settings)


def test_without_a_chat_template_the_prompt_is_plain_paragraphs_and_still_exact():
    tokenizer = WordTokenizer()
    conversation = build_conversation(tokenizer, length=300, depth=0.5, seed=0)

    text, ids = render(tokenizer, conversation)

    assert len(ids) == 300
    assert text.startswith(f"System: {conversation.system}\n\nUser: ")
    assert text.endswith(f"User: {conversation.question}\n\nAssistant:")


def test_fact_depth_is_none_once_the_fact_is_gone():
    conversation = Conversation("s", (Turn("user", "a"), Turn("assistant", "b")), "q?", "X-1", "X-1.", None)

    assert conversation.fact_depth is None
    assert conversation.pairs == 1
