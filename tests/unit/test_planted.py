"""Planted regressions: each knob must really cost what it claims, or self-check gates prove nothing."""

from __future__ import annotations

import dataclasses

import pytest

from pytest_longctx.gate.spec import VariantSpec

PROMPT = [2 + i % 90 for i in range(200)]


def test_planted_kv_copies_hold_real_extra_memory(tiny_backend):
    base = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=3)
    doubled = tiny_backend.generate(PROMPT, variant=VariantSpec("c", planted_kv_copies=2), max_new_tokens=3)
    assert doubled.kv_bytes == 2 * base.kv_bytes and doubled.kv_bytes_analytic == 2 * base.kv_bytes_analytic


def test_planted_decode_delay_slows_each_decode_step(tiny_backend):
    base = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=12)
    slow = tiny_backend.generate(PROMPT, variant=VariantSpec("c", planted_decode_delay=10.0), max_new_tokens=12)
    assert slow.answer == base.answer
    # 11x in theory; tiny steps are noisy on a busy machine, so the bound leaves a wide margin.
    assert slow.decode_s_per_token > 3.0 * base.decode_s_per_token


def test_planted_window_evicts_after_prefill_but_keeps_positions(tiny_backend):
    windowed = tiny_backend.generate(PROMPT, variant=VariantSpec("c", planted_window=16), max_new_tokens=8)
    assert windowed.kv_tokens == 16 + windowed.new_tokens - 1
    full = tiny_backend.generate(PROMPT, variant=VariantSpec("b", planted_window=10_000), max_new_tokens=8)
    reference = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=8)
    assert full.answer == reference.answer  # explicit positions change nothing when nothing is evicted


@pytest.mark.slow
def test_a_truncating_window_loses_the_needle_on_the_real_model():
    from pytest_longctx.backends.in_process import TransformersBackend
    from pytest_longctx.gate.spec import ModelSpec
    from pytest_longctx.tasks.haystack import build_haystack

    backend = TransformersBackend.load(ModelSpec())
    prompt = build_haystack(backend.tokenizer, length=512, depth=0.5, seed=1)
    kept = backend.generate(prompt.token_ids, variant=VariantSpec("b"), max_new_tokens=24)
    cut = backend.generate(prompt.token_ids, variant=VariantSpec("c", planted_window=8), max_new_tokens=24)
    assert prompt.answer in kept.answer
    assert prompt.answer not in cut.answer


def test_cell_timeout_raises(tiny_backend):
    from pytest_longctx.backends.in_process import CellTimeout

    with pytest.raises(CellTimeout, match="cell_timeout_s"):
        slowed = dataclasses.replace(VariantSpec("c"), planted_decode_delay=50.0)
        tiny_backend.generate(PROMPT, variant=slowed, max_new_tokens=20, timeout_s=0.05)
