"""Multi-document QA: the answer document's position, relevance scores, near misses, and arranging documents."""

from __future__ import annotations

import re

import pytest

from pytest_longctx.tasks import Document, build_task, parse_task
from pytest_longctx.tasks.multi_doc_qa import build_multi_doc_qa


def edge_pack(documents: list[Document]) -> list[Document]:
    """Most relevant documents at both ends of the context, least relevant in the middle."""
    ranked = sorted(documents, key=lambda d: d.relevance, reverse=True)
    return ranked[0::2] + ranked[1::2][::-1]


@pytest.mark.parametrize(("depth", "position"), [(0.0, 0), (0.5, 4), (1.0, 9)])
def test_answer_document_position_sweeps_with_depth(smollm_tokenizer, depth, position):
    prompt = build_task(smollm_tokenizer, parse_task("multi_doc_qa"), length=2048, depth=depth, seed=0)
    holder = [i for i, d in enumerate(prompt.documents) if d.holds_answer]

    assert holder == [position] and prompt.actual_depth == pytest.approx(position / 9)
    assert len(prompt.documents) == 10 and prompt.tokens == 2048
    numbered = re.findall(r"^Document \[(\d+)\] \(Title: (.+)\)$", prompt.prompt_text, re.MULTILINE)
    assert numbered == [(str(i), d.title) for i, d in enumerate(prompt.documents, 1)]
    assert prompt.answer in prompt.documents[position].text
    assert smollm_tokenizer.decode(list(prompt.token_ids[slice(*prompt.evidence_spans[0])])).startswith(
        f"Document [{position + 1}]")


def test_documents_are_rendered_as_given(smollm_tokenizer):
    prompt = build_task(smollm_tokenizer, parse_task("multi_doc_qa"), length=1024, depth=0.5, seed=3)

    for i, doc in enumerate(prompt.documents, 1):
        assert f"Document [{i}] (Title: {doc.title})\n{doc.text}" in prompt.prompt_text
    years = re.findall(r"was founded in (\d{4})\.", prompt.prompt_text)
    assert sorted(years) == sorted(prompt.answers + prompt.distractors) and len(set(years)) == 10
    entity = re.search(r"was the (.+) founded\?", prompt.question).group(1)
    assert f"The {entity} was founded in {prompt.answer}." in prompt.prompt_text


def test_relevance_is_high_for_the_answer_and_the_near_misses_and_not_always_top(smollm_tokenizer):
    tops = []
    for seed in range(12):
        prompt = build_multi_doc_qa(smollm_tokenizer, length=512, depth=0.5, seed=seed, documents=6, near_misses=2)
        entity = re.search(r"was the (.+) founded\?", prompt.question).group(1)
        answer = next(d for d in prompt.documents if d.holds_answer)
        words = set(re.findall(r"\w+", entity))
        near = [d for d in prompt.documents if not d.holds_answer and set(re.findall(r"\w+", d.title)) & words]
        rest = [d for d in prompt.documents if d is not answer and d not in near]

        assert len(near) == 2 and all(0.0 <= d.relevance <= 1.0 for d in prompt.documents)
        assert min(d.relevance for d in near + [answer]) > max(d.relevance for d in rest)
        tops.append(max(prompt.documents, key=lambda d: d.relevance).holds_answer)
    assert any(tops) and not all(tops)


def test_arrange_reorders_documents_before_rendering_and_keeps_the_length(smollm_tokenizer):
    plain = build_multi_doc_qa(smollm_tokenizer, length=1536, depth=0.5, seed=1)
    packed = build_multi_doc_qa(smollm_tokenizer, length=1536, depth=0.5, seed=1, arrange=edge_pack)

    relevance = [d.relevance for d in packed.documents]
    assert relevance[0] == max(relevance) and relevance[-1] == sorted(relevance)[-2]
    assert min(relevance) in relevance[3:7]  # the least relevant end up in the middle
    assert sorted(d.title for d in packed.documents) == sorted(d.title for d in plain.documents)
    assert packed.tokens == 1536 and packed.answers == plain.answers
    assert packed.prompt_sha256 != plain.prompt_sha256
    position = next(i for i, d in enumerate(packed.documents) if d.holds_answer)
    assert packed.actual_depth == pytest.approx(position / 9)
    via_registry = build_task(smollm_tokenizer, parse_task("multi_doc_qa"), length=1536, depth=0.5, seed=1, arrange=edge_pack)
    assert via_registry == packed


def test_arrange_must_keep_the_documents(smollm_tokenizer):
    with pytest.raises(ValueError, match="same documents"):
        build_multi_doc_qa(smollm_tokenizer, length=1024, depth=0.5, seed=0, arrange=lambda docs: docs[1:])


def test_too_short_for_the_documents_says_so(smollm_tokenizer):
    with pytest.raises(ValueError, match="too short for 40 documents"):
        build_multi_doc_qa(smollm_tokenizer, length=512, depth=0.5, seed=0, documents=40)
