"""Loss by position: buckets cover the sequence, the losses are the cross-entropy by hand, chunking changes nothing."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from pytest_longctx.gate.loss_curve import LossCurve, long_text, loss_by_position, loss_ratio

TOKENS = [random.Random(7).randrange(96) for _ in range(300)]


@pytest.fixture(scope="module")
def by_hand(tiny_llama):
    """Each token's next-token loss from one plain forward pass: -log softmax(logits[t - 1])[token t]."""
    import torch

    with torch.inference_mode():
        logits = tiny_llama(input_ids=torch.tensor([TOKENS])).logits[0].double()
    log_probs = logits.log_softmax(-1)
    return [-float(log_probs[t - 1, TOKENS[t]]) for t in range(1, len(TOKENS))]


def test_equal_buckets_cover_the_sequence(tiny_llama):
    curve = loss_by_position(tiny_llama, TOKENS, buckets=4)

    assert curve.edges == (0, 75, 150, 225, 300) and curve.tokens == 300
    assert curve.counts == (74, 75, 75, 75)  # every token after the first is predicted once
    assert len(curve.losses) == 4


def test_bucket_means_are_the_hand_computed_cross_entropy(tiny_llama, by_hand):
    curve = loss_by_position(tiny_llama, TOKENS, buckets=3)

    expected = [sum(by_hand[a - 1 if a else 0 : b - 1]) / len(by_hand[a - 1 if a else 0 : b - 1])
                for a, b in itertools.pairwise(curve.edges)]
    assert curve.losses == pytest.approx(expected, rel=1e-5)
    assert all(math.log(96) * 0.8 < loss < math.log(96) * 1.2 for loss in curve.losses)  # a random model is near uniform


def test_chunks_with_the_cache_equal_one_forward(tiny_llama):
    whole = loss_by_position(tiny_llama, TOKENS, buckets=5, chunk_tokens=1024)
    chunked = loss_by_position(tiny_llama, TOKENS, buckets=5, chunk_tokens=37)

    assert chunked.edges == whole.edges
    assert chunked.losses == pytest.approx(whole.losses, rel=1e-5)


def test_explicit_edges(tiny_llama, by_hand):
    curve = loss_by_position(tiny_llama, TOKENS, buckets=[10, 20, 300])

    assert curve.edges == (10, 20, 300) and curve.counts == (10, 280)
    assert curve.losses[0] == pytest.approx(sum(by_hand[9:19]) / 10, rel=1e-5)


@pytest.mark.parametrize(
    ("buckets", "message"),
    [
        (0, "between 1 and 299"),
        (300, "between 1 and 299"),
        ([0, 1, 300], "first bucket holds no prediction"),
        ([0, 200, 150], "must increase"),
        ([0, 301], "must increase from >= 0 to <= 300"),
        ([100], "at least two whole numbers"),
        ([0, 1.5, 300], "at least two whole numbers"),
    ],
)
def test_bad_buckets_are_rejected(tiny_llama, buckets, message):
    with pytest.raises(ValueError, match=message):
        loss_by_position(tiny_llama, TOKENS, buckets=buckets)


def test_loss_ratio_names_the_worst_bucket():
    baseline = LossCurve((0, 10, 20, 30), (2.0, 2.0, 2.0), (9, 10, 10), 30)
    candidate = LossCurve((0, 10, 20, 30), (2.0, 1.8, 2.6), (9, 10, 10), 30)

    assert loss_ratio(baseline, candidate) == (pytest.approx(1.3), 2)
    assert loss_ratio(baseline, baseline) == (1.0, 0)
    with pytest.raises(ValueError, match="different buckets"):
        loss_ratio(baseline, LossCurve((0, 30), (2.0,), (29,), 30))


@pytest.mark.parametrize(("tokens", "seed"), [(1, 0), (333, 0), (2048, 1), (4097, 2)])
def test_long_text_has_exactly_the_tokens(smollm_tokenizer, tokens, seed):
    text = long_text(smollm_tokenizer, tokens, seed)

    assert len(smollm_tokenizer(text, add_special_tokens=False)["input_ids"]) == tokens
    assert long_text(smollm_tokenizer, tokens, seed) == text


def test_long_text_is_seeded_prose(smollm_tokenizer):
    one, two = long_text(smollm_tokenizer, 1000, 0), long_text(smollm_tokenizer, 1000, 1)

    assert one != two
    assert one.count(".") > 30 and "\n" in one and not any(c.isdigit() for c in one)
    assert long_text(smollm_tokenizer, 2000, 0).startswith(one[:-20])  # longer texts extend shorter ones


def test_a_cache_under_test_changes_the_losses_only_slightly(tiny_llama):
    from pytest_longctx.backends.kv_cache import make_cache

    exact = loss_by_position(tiny_llama, TOKENS, buckets=3, chunk_tokens=50)
    int8 = loss_by_position(tiny_llama, TOKENS, buckets=3, chunk_tokens=50, cache=make_cache("int8", tiny_llama.config))

    ratio, _ = loss_ratio(exact, int8)
    assert int8.losses != exact.losses and 0.98 < ratio < 1.02
