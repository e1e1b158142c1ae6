"""Scoring an answer (found, credit, why it missed) and when an early-stopping decoder may stop."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from pytest_longctx.tasks import Score, TaskPrompt


def prompt(answers, distractors=(), *, scoring="all", pattern=r"[A-Z]+-\d{4}") -> TaskPrompt:
    return TaskPrompt(
        family="test", prompt_text="", token_ids=(5, 6, 7), length=3, depth=0.5, seed=0, question="?",
        answers=tuple(answers), distractors=tuple(distractors), evidence_spans=((1, 2),), scoring=scoring,
        value_pattern=pattern,
    )


CODE = prompt(["KESTREL-4827"], ["OSPREY-1234"])
NUMBERS = prompt(["1234567", "7654321", "5555555"], ["9999999"], scoring="part", pattern=r"\d{7}")


@pytest.mark.parametrize(
    ("answer", "hit_limit", "failure"),
    [
        ("KESTREL-4827", False, None),
        ("the code is kestrel-4827.", False, None),  # case does not matter
        ("", False, "refusal/other"),
        ("   ", True, "refusal/other"),
        ("OSPREY-1234", False, "wrong_value"),
        ("KESTREL-4872", False, "partial"),  # one of the value's parts
        ("The override code for the vault is KEST", True, "truncated"),
        ("The override code for the vault is", True, "truncated"),
        ("The override code for the vault is 2024-12-14 16:5", True, "missing"),  # another value, then cut off
        ("I think it is HERON-1111.", False, "missing"),
        ("KESTREL-48271", False, "partial"),  # a longer value is not the value
    ],
)
def test_single_value_failures(answer, hit_limit, failure):
    score = CODE.score(answer, hit_limit=hit_limit)

    assert score == Score(failure is None, 1.0 if failure is None else 0.0, failure)


def test_several_values_get_partial_credit_under_part_scoring():
    assert NUMBERS.score("1234567, 7654321, 5555555", hit_limit=False) == Score(True, 1.0, None)
    partial = NUMBERS.score("1234567 and 5555555", hit_limit=False)
    assert partial.failure == "partial" and not partial.found
    assert partial.fraction == pytest.approx(2 / 3)
    assert NUMBERS.score("9999999", hit_limit=False) == Score(False, 0.0, "wrong_value")
    assert NUMBERS.score("The numbers are 12345", hit_limit=True) == Score(False, 0.0, "truncated")
    assert NUMBERS.score("12345678", hit_limit=False) == Score(False, 0.0, "missing")


def test_all_scoring_gives_no_credit_for_some_values():
    strict = prompt(["1234567", "7654321"], scoring="all", pattern=r"\d{7}")

    assert strict.score("1234567", hit_limit=False) == Score(False, 0.0, "partial")
    assert strict.score("7654321 1234567", hit_limit=False) == Score(True, 1.0, None)


def test_words_match_whole_words_only():
    words = prompt(["apple", "pear"], ["plum"], scoring="part", pattern="(?i:apple|pear|plum)")

    assert words.score("Pineapple, spear", hit_limit=False).failure == "missing"
    assert words.score("Apple, PEAR", hit_limit=False).found
    assert words.score("plum", hit_limit=False).failure == "wrong_value"


@pytest.mark.parametrize(
    ("text", "complete"),
    [
        ("", False),
        ("The code is KESTREL-48", False),
        ("The code is KESTREL-4827", False),  # a longer code may still be coming
        ("The code is KESTREL-4827.", True),
        ("KESTREL-4827\n", True),
        ("Here is the code:\n", False),  # a preamble line never ends the answer
        ("Here is the code:\n\nKESTREL-", False),
        ("OSPREY-1234", False),  # the wrong value may still grow
        ("OSPREY-1234,", True),  # a complete wrong value of the same form
        ("HERON-1111 ", True),  # any complete wrong value ends a single-value answer
        ("I am not sure about the vault.", False),
        ("I am not sure.\nMaybe", False),
        ("Maybe HERON-1111 or", True),
        ("It is 2024-12-14\n", False),  # digits of another form are not a value of the answer's form
    ],
)
def test_answer_complete_for_one_value(text, complete):
    assert CODE.answer_complete(text) is complete


@pytest.mark.parametrize(
    ("text", "complete"),
    [
        ("1234567, 7654321, 555555", False),
        ("1234567, 7654321, 5555555", False),
        ("1234567, 7654321, 5555555.", True),
        ("9999999, 1234567, 8888888, 7654321", False),  # wrong values do not end a list of several
        ("1234567\n7654321\n", False),  # values one per line
        ("1234567\n7654321\n\n", True),  # a blank line after the values ends them
        ("1234567, 7654321\nI hope this helps.\n", True),
        ("Sure! The numbers are:\n\n", False),
    ],
)
def test_answer_complete_for_several_values(text, complete):
    assert NUMBERS.answer_complete(text) is complete


def first_stop(p: TaskPrompt, full: str) -> str:
    """What an early-stopping decoder keeps of `full` (fed one character at a time)."""
    return next((full[:i] for i in range(1, len(full) + 1) if p.answer_complete(full[:i])), full)


@pytest.mark.parametrize(
    ("full", "kept"),
    [
        ("The code is KESTREL-4827. It is used at night.\nMore", "The code is KESTREL-4827."),
        ("Here is the code:\nKESTREL-4827\n", "Here is the code:\nKESTREL-4827\n"),
        ("I cannot find it.\nThe code is KESTREL-4827.", "I cannot find it.\nThe code is KESTREL-4827."),
        ("The code is HERON-1111.\nNo wait, KESTREL-4827.", "The code is HERON-1111."),
    ],
)
def test_stopping_early_keeps_the_score_unless_a_wrong_value_came_first(full, kept):
    assert first_stop(CODE, full) == kept
    early, whole = CODE.score(kept, hit_limit=False), CODE.score(full, hit_limit=False)
    if "HERON" not in kept:
        assert early == whole
    else:
        assert early.failure == "missing"  # the model committed to another value before correcting itself


def test_stopping_early_on_several_values_keeps_their_credit():
    full = "The numbers are:\n1234567\n7654321\n5555555\n\nThese are all."

    assert first_stop(NUMBERS, full) == "The numbers are:\n1234567\n7654321\n5555555\n"
    assert NUMBERS.score(first_stop(NUMBERS, full), hit_limit=False) == NUMBERS.score(full, hit_limit=False)


def test_prompt_properties():
    p = NUMBERS

    assert p.tokens == 3 and p.needle_start == 1
    assert p.answer == "1234567, 7654321, 5555555"
    assert p.prompt_sha256 == hashlib.sha256(b"".join(i.to_bytes(4, "little", signed=True) for i in (5, 6, 7))).hexdigest()
    no_evidence = dataclasses.replace(p, evidence_spans=())
    assert no_evidence.needle_start is None


def test_excerpt_shows_the_first_evidence_line():
    p = dataclasses.replace(CODE, prompt_text="a\n" * 200 + "The code is KESTREL-4827.\n" + "b\n" * 200)

    excerpt = p.excerpt(context_chars=10)
    assert "The code is KESTREL-4827." in excerpt and excerpt.startswith("…") and excerpt.endswith("…")
