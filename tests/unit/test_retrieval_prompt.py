"""Retrieval applied to a sweep cell's prompt: what stays, what is cut, and when a miss is the retriever's."""

from __future__ import annotations

import pytest

from pytest_longctx.changes.retrieval import context_bounds, retrieval_prompt
from pytest_longctx.changes.retrievers import RetrievalSettings
from pytest_longctx.tasks import build_task, parse_task


@pytest.mark.parametrize("family", ["niah", "niah_multikey", "multi_doc_qa", "variable_tracking"])
def test_the_haystack_is_found_between_instructions_and_question(smollm_tokenizer, family):
    prompt = build_task(smollm_tokenizer, parse_task(family), length=1024, depth=0.5, seed=0)
    start, end = context_bounds(prompt)
    body = prompt.prompt_text[start:end]
    assert prompt.question not in body and "<|im_start|>" not in body
    for a, b in prompt.evidence_spans:
        assert smollm_tokenizer.decode(list(prompt.token_ids[a:b])).strip() in body


def test_bm25_keeps_the_needle_line_and_shrinks_the_prompt(smollm_tokenizer):
    prompt = build_task(smollm_tokenizer, parse_task("niah"), length=2048, depth=0.5, seed=0)
    out = retrieval_prompt(smollm_tokenizer, prompt, RetrievalSettings(method="bm25", chunk_tokens=128, top_k=2))
    p = out.prompt
    assert not out.not_retrieved and p.tokens < 600 and p.answers == prompt.answers
    tail = prompt.prompt_text[prompt.prompt_text.rfind("\n\n" + prompt.question):]
    assert p.prompt_text.endswith(tail) and p.prompt_text[:150] == prompt.prompt_text[:150]
    (a, b), = p.evidence_spans
    assert prompt.answers[0] in smollm_tokenizer.decode(list(p.token_ids[a:b]))
    assert out.seconds > 0 and out.record["total_chunks"] > 10


def test_a_retriever_that_misses_the_needle_is_reported_as_such(smollm_tokenizer):
    prompt = build_task(smollm_tokenizer, parse_task("niah_multikey"), length=2048, depth=0.5, seed=1)
    out = retrieval_prompt(smollm_tokenizer, prompt, RetrievalSettings(method="bm25", chunk_tokens=64, top_k=1))
    assert out.not_retrieved == (prompt.answers[0] not in out.prompt.prompt_text)
    assert out.not_retrieved == (out.prompt.evidence_spans == ())


def test_a_conversation_has_no_haystack_to_retrieve_from(smollm_tokenizer):
    prompt = build_task(smollm_tokenizer, parse_task("conversation"), length=1024, depth=0.5, seed=0)
    with pytest.raises(ValueError, match="retrieval needs a haystack prompt"):
        retrieval_prompt(smollm_tokenizer, prompt, RetrievalSettings(method="bm25"))
