"""The haystack factory: the marked cell's defaults, needles as text, user documents, several needles, task families."""

from __future__ import annotations

import re

import pytest

from pytest_longctx.marker import LongctxCell
from pytest_longctx.tasks import TaskError, TaskPrompt
from pytest_longctx.tasks.haystack import Haystack, MultiHaystack, Needle
from pytest_longctx.testing.haystack import HaystackFactory

DOCUMENT = "\n".join(f"Note {i}: the ferry leaves pier {i % 7} on the hour." for i in range(300))


@pytest.fixture
def factory(smollm_tokenizer):
    return HaystackFactory(smollm_tokenizer)


def test_cell_supplies_length_depth_and_seed(smollm_tokenizer):
    cell_factory = HaystackFactory(smollm_tokenizer, cell=LongctxCell(700, 0.25, 3))

    haystack = cell_factory()

    assert isinstance(haystack, Haystack)
    assert (haystack.tokens, haystack.depth, haystack.seed) == (700, 0.25, 3)
    assert cell_factory(depth=1.0).depth == 1.0  # explicit arguments win
    assert cell_factory() is haystack  # cached


def test_without_a_cell_length_is_required(factory):
    with pytest.raises(TypeError, match="needs length="):
        factory()
    assert factory(600).depth == 0.5


def test_needle_as_text_in_a_document(factory, tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(DOCUMENT)

    from_text = factory(800, 0.5, needle="The ferry to Skye is cancelled.", question="Which ferry is cancelled?",
                        answer="Skye", filler=DOCUMENT)
    from_path = factory(800, 0.5, needle=Needle("The ferry to Skye is cancelled.", "Which ferry is cancelled?", "Skye"),
                        filler=path)

    assert from_text.token_ids == from_path.token_ids and from_text.tokens == 800
    assert "Note 0: the ferry" in from_text.prompt_text and "shipment" not in from_text.prompt_text
    assert from_text.answer == "Skye"
    lines = iter(DOCUMENT.splitlines())
    assert factory(800, 0.5, filler=lines).tokens == 800  # a one-shot iterator is used, not cached


def test_needle_arguments_are_checked(factory):
    with pytest.raises(TypeError, match="needs question= and answer="):
        factory(600, needle="The code is 1.")
    with pytest.raises(TypeError, match="need needle="):
        factory(600, answer="1")
    with pytest.raises(TypeError, match="not with a Needle"):
        factory(600, needle=Needle("a 1", "q", "1"), answer="1")
    with pytest.raises(TypeError, match="either needle= or needles="):
        factory(600, needle=Needle("a 1", "q", "1"), needles=2)
    with pytest.raises(TypeError, match="depths= goes with needles="):
        factory(600, depths=[0.5])


def test_several_needles(factory):
    spread = factory(1000, needles=3, seed=2)
    placed = factory(1000, needles=list(spread.needles), depths=[0.9, 0.1, 0.5], question="List the three codes.")

    assert isinstance(spread, MultiHaystack)
    assert spread.depths == (0.0, 0.5, 1.0) and spread.tokens == 1000
    assert placed.needles == spread.needles and placed.question == "List the three codes."
    assert placed.needle_spans[1][0] < placed.needle_spans[2][0] < placed.needle_spans[0][0]


def test_a_task_family_with_options_from_the_cell(smollm_tokenizer):
    cell_factory = HaystackFactory(smollm_tokenizer, cell=LongctxCell(900, 0.75, 2))

    prompt = cell_factory(family="niah_multikey", distractors=5, value="uuid")

    assert isinstance(prompt, TaskPrompt)
    assert (prompt.family, prompt.tokens, prompt.depth, prompt.seed) == ("niah_multikey", 900, 0.75, 2)
    assert len(prompt.distractors) == 5 and re.fullmatch(r"[0-9a-f-]{36}", prompt.answer)
    assert cell_factory(family="niah_multikey", value="uuid", distractors=5) is prompt  # cached, options in any order
    assert cell_factory(family="niah", depth=0.75).prompt_sha256 == cell_factory().prompt_sha256


def test_task_family_arguments_are_checked(factory):
    with pytest.raises(TypeError, match="family= builds its own needles and filler; drop filler, needles"):
        factory(600, family="niah_single", needles=2, filler=DOCUMENT)
    with pytest.raises(TypeError, match="unexpected arguments distractors, value"):
        factory(600, value="uuid", distractors=2)
    with pytest.raises(TaskError, match="distractor: is not an option of niah_multikey"):
        factory(600, family="niah_multikey", distractor=2)
    with pytest.raises(TaskError, match="'ruler' is not a task family"):
        factory(600, family="ruler")


def test_documents_can_be_arranged(factory):
    reverse = lambda documents: documents[::-1]  # noqa: E731

    plain = factory(1024, 0.0, family="multi_doc_qa", documents=4)
    arranged = factory(1024, 0.0, family="multi_doc_qa", documents=4, arrange=reverse)

    assert plain.documents[0].holds_answer and arranged.documents[-1].holds_answer
    assert [d.title for d in arranged.documents] == [d.title for d in plain.documents][::-1]
