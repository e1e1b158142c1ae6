"""Prompt-level layout: edge packing of documents, the chat-history budget, and their gate keys."""

from __future__ import annotations

import dataclasses
import itertools
import random
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from pytest_longctx.changes.prompt_layout import (
    HistoryBudget,
    LayoutError,
    PromptLayout,
    apply_history_budget,
    arrange,
    edge_order,
    given_order,
    parse_history,
    parse_layout,
    parse_packing,
)
from pytest_longctx.tasks.conversation import Conversation, Turn, build_conversation, render


@dataclass(frozen=True)
class Doc:
    title: str
    relevance: float


class WordTokenizer:
    """One token per whitespace-separated word, and no chat template: cheap enough for many budgets."""

    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [len(word) for word in text.split()]}


def random_docs(seed: int) -> list[Doc]:
    rng = random.Random(seed)
    # Half the cases draw from a few values, so ties are common; the rest draw floats, negatives included.
    values = [0.0, 0.5, 1.0] if seed % 2 else None
    size = rng.randint(0, 14)
    return [Doc(f"d{i}", rng.choice(values) if values else rng.uniform(-2, 2)) for i in range(size)]


# --- packing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(300))
def test_edge_order_is_a_permutation_with_the_top_two_at_the_ends_and_relevance_falling_inwards(seed):
    docs = random_docs(seed)

    out = edge_order(docs)

    assert sorted(map(id, out)) == sorted(map(id, docs))  # the same objects, each once
    if not docs:
        return
    ranked = sorted((d.relevance for d in docs), reverse=True)
    assert out[0].relevance == ranked[0]
    if len(docs) >= 2:
        assert out[-1].relevance == ranked[1]
    front, back = out[: (len(out) + 1) // 2], out[(len(out) + 1) // 2 :][::-1]
    for half in (front, back):
        assert all(a.relevance >= b.relevance for a, b in itertools.pairwise(half))
    # The least relevant (last-ranked) document sits where the two halves meet.
    assert out[len(out) // 2].relevance == ranked[-1]


def test_edge_order_follows_the_documented_rule():
    docs = [Doc("a", 0.1), Doc("b", 0.9), Doc("c", 0.5), Doc("d", 0.7), Doc("e", 0.3), Doc("f", 0.8)]
    # ranks: b1 f2 d3 c4 e5 a6 -> front 1,3,5 then back 6,4,2
    assert [d.title for d in edge_order(docs)] == ["b", "d", "e", "a", "c", "f"]


def test_edge_order_breaks_ties_by_given_position():
    docs = [Doc(f"d{i}", 1.0) for i in range(7)]

    assert [d.title for d in edge_order(docs)] == ["d0", "d2", "d4", "d6", "d5", "d3", "d1"]


def test_edge_order_leaves_its_input_alone_and_accepts_any_object_with_a_relevance():
    docs = [SimpleNamespace(name="x", relevance=1), SimpleNamespace(name="y", relevance=3), SimpleNamespace(name="z", relevance=2)]
    before = list(docs)

    assert [d.name for d in edge_order(docs)] == ["y", "x", "z"]
    assert docs == before
    assert edge_order(()) == []


def test_edge_order_refuses_a_nan_relevance():
    with pytest.raises(ValueError, match="document 1 has a NaN relevance"):
        edge_order([Doc("a", 1.0), Doc("b", float("nan"))])


def test_given_order_is_a_new_list_in_the_same_order():
    docs = [Doc("a", 0.1), Doc("b", 0.9)]

    out = given_order(docs)

    assert out == docs and out is not docs


def test_arrange_names_the_orderings():
    docs = random_docs(3)

    assert arrange("given")(docs) == docs
    assert arrange("edge")(docs) == edge_order(docs)
    with pytest.raises(ValueError, match="unknown packing 'middle'; use one of: given, edge"):
        arrange("middle")  # type: ignore[arg-type]


# --- history budget --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat(smollm_tokenizer) -> Conversation:
    return build_conversation(smollm_tokenizer, length=1024, depth=0.5, seed=0)


def tokens(tokenizer, conversation: Conversation) -> int:
    return len(render(tokenizer, conversation)[1])


def with_newest_pairs(conversation: Conversation, pairs: int) -> Conversation:
    return dataclasses.replace(conversation, turns=conversation.turns[len(conversation.turns) - 2 * pairs :])


def assert_budget_cut(tokenizer, original: Conversation, cut: Conversation, budget: int) -> None:
    assert tokens(tokenizer, cut) <= budget
    if cut.pairs < original.pairs:  # one more (older) pair would not have fitted
        assert tokens(tokenizer, with_newest_pairs(original, cut.pairs + 1)) > budget
    assert cut.system == original.system and cut.question == original.question and cut.answer == original.answer
    assert cut.turns == original.turns[len(original.turns) - len(cut.turns) :]
    assert len(cut.turns) % 2 == 0


@pytest.mark.parametrize("budget", [150, 151, 400, 613, 1000, 1023, 1024, 5000])
def test_history_budget_keeps_the_newest_pairs_that_fit(smollm_tokenizer, chat, budget):
    cut = apply_history_budget(smollm_tokenizer, chat, budget=budget)

    assert_budget_cut(smollm_tokenizer, chat, cut, budget)


def test_history_budget_at_or_above_the_length_keeps_everything(smollm_tokenizer, chat):
    assert apply_history_budget(smollm_tokenizer, chat, budget=1024) == chat


@pytest.mark.parametrize("seed", range(60))
def test_history_budget_over_random_conversations_and_budgets(seed):
    tokenizer = WordTokenizer()
    rng = random.Random(seed)
    original = build_conversation(tokenizer, length=rng.randint(150, 600), depth=rng.random(), seed=seed)
    floor = tokens(tokenizer, with_newest_pairs(original, 0))

    budget = rng.randint(floor, tokens(tokenizer, original) + 20)
    cut = apply_history_budget(tokenizer, original, budget=budget)

    assert_budget_cut(tokenizer, original, cut, budget)
    dropped = len(original.turns) - len(cut.turns)
    assert original.fact_turn is not None
    expected = original.fact_turn - dropped if original.fact_turn >= dropped else None
    assert cut.fact_turn == expected


def test_the_fact_is_lost_when_older_than_the_budget_reaches_and_kept_otherwise(smollm_tokenizer):
    early = build_conversation(smollm_tokenizer, length=1024, depth=0.1, seed=1)
    late = build_conversation(smollm_tokenizer, length=1024, depth=0.9, seed=1)

    lost = apply_history_budget(smollm_tokenizer, early, budget=512)
    kept = apply_history_budget(smollm_tokenizer, late, budget=512)

    assert lost.fact_turn is None and lost.fact_depth is None
    assert early.answer not in render(smollm_tokenizer, lost)[0]
    assert kept.fact_turn is not None
    assert kept.turns[kept.fact_turn] == Turn("user", late.fact)
    assert late.answer in render(smollm_tokenizer, kept)[0]


def test_a_budget_below_the_system_prompt_and_question_says_by_how_much(smollm_tokenizer, chat):
    floor = tokens(smollm_tokenizer, with_newest_pairs(chat, 0))

    with pytest.raises(ValueError, match=rf"alone take {floor} tokens, 10 over the history budget of {floor - 10};"):
        apply_history_budget(smollm_tokenizer, chat, budget=floor - 10)
    assert apply_history_budget(smollm_tokenizer, chat, budget=floor).turns == ()


def test_history_budget_refuses_half_pairs_and_unknown_policies():
    tokenizer = WordTokenizer()
    odd = Conversation("sys", (Turn("user", "hi"), Turn("assistant", "yo"), Turn("user", "more")), "q?", "A-1", "A-1.", None)

    with pytest.raises(ValueError, match="whole user/assistant pairs"):
        apply_history_budget(tokenizer, odd, budget=100)
    with pytest.raises(ValueError, match="unknown history policy 'oldest_first'"):
        apply_history_budget(tokenizer, odd, budget=100, policy="oldest_first")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="budget must be a positive integer"):
        apply_history_budget(tokenizer, odd, budget=0)


# --- gate keys -------------------------------------------------------------------------------------------


def test_parse_packing_accepts_the_choices_and_names_them_otherwise():
    assert parse_packing("edge") == "edge" and parse_packing("given") == "given"
    with pytest.raises(LayoutError) as caught:
        parse_packing("middle_out")
    assert caught.value.key == "packing"
    assert str(caught.value) == "key 'packing': 'middle_out' is not supported. Fix: use one of: given, edge."
    assert isinstance(caught.value, ValueError)


def test_parse_history_reads_budget_and_defaults_the_policy():
    assert parse_history({"budget": 4096, "policy": "newest_first"}) == HistoryBudget(4096, "newest_first")
    assert parse_history({"budget": 512}) == HistoryBudget(512)


@pytest.mark.parametrize(
    ("value", "key", "problem"),
    [
        (4096, "history", "expected a mapping, got int"),
        ({"budget": 10, "keep": "all"}, "history.keep", "unknown key"),
        ({"policy": "newest_first"}, "history.budget", "is required"),
        ({"budget": "4k"}, "history.budget", "expected a whole number of tokens, got '4k'"),
        ({"budget": 4096.0}, "history.budget", "expected a whole number of tokens, got 4096.0"),
        ({"budget": True}, "history.budget", "expected a whole number of tokens, got True"),
        ({"budget": 0}, "history.budget", "0 is not positive"),
        ({"budget": 10, "policy": "oldest_first"}, "history.policy", "'oldest_first' is not supported"),
    ],
)
def test_parse_history_names_the_bad_key(value, key, problem):
    with pytest.raises(LayoutError) as caught:
        parse_history(value)

    assert (caught.value.key, caught.value.problem) == (key, problem)
    assert str(caught.value).startswith(f"key '{key}': {problem}. Fix: ")


def test_parse_layout_reads_only_its_keys_and_the_layout_applies_them(smollm_tokenizer, chat):
    assert parse_layout({"name": "base", "kv_cache_dtype": "fp8"}) == PromptLayout()
    layout = parse_layout({"name": "rag", "packing": "edge", "history": {"budget": 600}})
    assert layout == PromptLayout("edge", HistoryBudget(600))

    docs = random_docs(5)
    assert layout.documents(docs) == edge_order(docs)
    assert PromptLayout().documents(docs) == docs
    assert layout.conversation(smollm_tokenizer, chat) == apply_history_budget(smollm_tokenizer, chat, budget=600)
    assert PromptLayout().conversation(smollm_tokenizer, chat) is chat
    with pytest.raises(LayoutError, match="key 'history.budget'"):
        parse_layout({"history": {"budget": -5}})
