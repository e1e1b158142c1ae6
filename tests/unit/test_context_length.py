"""Effective context length: where recall stops holding, and the candidate's length over the baseline's."""

from __future__ import annotations

import pytest

from pytest_longctx.gate.context_length import effective_length, effective_length_ratio

BASELINE = {1024: 1.0, 2048: 0.95, 4096: 0.9, 8192: 0.6}


def test_the_longest_length_before_recall_first_drops():
    assert effective_length(BASELINE) == 4096
    assert effective_length({8192: 0.6, 1024: 1.0, 4096: 0.9, 2048: 0.95}) == 4096  # order of the mapping is irrelevant


def test_recall_must_stay_up_a_later_recovery_does_not_count():
    assert effective_length({1024: 0.9, 2048: 0.5, 4096: 1.0}) == 1024


def test_threshold_is_inclusive_and_can_be_set():
    assert effective_length({1024: 0.85, 2048: 0.84}) == 1024
    assert effective_length(BASELINE, threshold=0.5) == 8192
    assert effective_length(BASELINE, threshold=0.99) == 1024


def test_none_when_even_the_shortest_length_fails():
    assert effective_length({1024: 0.8, 2048: 0.9}) is None


@pytest.mark.parametrize(
    ("recall", "message"),
    [
        ({}, "has no lengths"),
        ({0: 1.0}, "length 0 is not a positive integer"),
        ({1024.0: 1.0}, "length 1024.0 is not a positive integer"),
        ({1024: 1.5}, r"recall 1.5 at length 1024 is outside \[0, 1\]"),
    ],
)
def test_bad_input_is_rejected(recall, message):
    with pytest.raises(ValueError, match=message):
        effective_length(recall)


def test_ratio_of_candidate_to_baseline():
    halved = {**BASELINE, 4096: 0.7}

    assert effective_length_ratio(BASELINE, BASELINE) == 1.0
    assert effective_length_ratio(BASELINE, halved) == 0.5
    assert effective_length_ratio(halved, BASELINE) == 2.0  # a candidate may also reach further


def test_ratio_when_one_side_never_holds():
    failing = {length: 0.1 for length in BASELINE}

    assert effective_length_ratio(BASELINE, failing) == 0.0
    assert effective_length_ratio(failing, BASELINE) is None
    assert effective_length_ratio(failing, failing) is None


def test_ratio_needs_the_same_lengths():
    with pytest.raises(ValueError, match="different lengths"):
        effective_length_ratio(BASELINE, {1024: 1.0})
    with pytest.raises(ValueError, match="candidate has no lengths"):
        effective_length_ratio(BASELINE, {})
