"""Planted regressions: each knob must really cost what it claims, or self-check gates prove nothing."""

from __future__ import annotations

import pytest

from pytest_longctx.gate.spec import VariantSpec

PROMPT = [2 + i % 90 for i in range(200)]


def test_planted_kv_copies_hold_real_extra_memory(tiny_backend):
    base = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=3)
    doubled = tiny_backend.generate(PROMPT, variant=VariantSpec.of("c", planted={"kv_copies": 2}), max_new_tokens=3)
    assert doubled.kv_bytes == 2 * base.kv_bytes and doubled.kv_bytes_analytic == 2 * base.kv_bytes_analytic


def test_planted_decode_delay_slows_each_decode_step(tiny_backend):
    base = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=12)
    slow = tiny_backend.generate(PROMPT, variant=VariantSpec.of("c", planted={"decode_delay": 10.0}), max_new_tokens=12)
    assert slow.answer == base.answer
    # 11x in theory; tiny steps are noisy on a busy machine, so the bound leaves a wide margin.
    assert slow.decode_s_per_token > 3.0 * base.decode_s_per_token


def test_planted_window_evicts_after_prefill_but_keeps_positions(tiny_backend):
    windowed = tiny_backend.generate(PROMPT, variant=VariantSpec.of("c", planted={"window": 16}), max_new_tokens=8)
    assert windowed.kv_tokens == 16 + windowed.new_tokens - 1
    full = tiny_backend.generate(PROMPT, variant=VariantSpec.of("b", planted={"window": 10_000}), max_new_tokens=8)
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
    cut = backend.generate(prompt.token_ids, variant=VariantSpec.of("c", planted={"window": 8}), max_new_tokens=24)
    assert prompt.answer in kept.answer
    assert prompt.answer not in cut.answer


def test_cell_timeout_raises(tiny_backend):
    from pytest_longctx.backends.in_process import CellTimeout

    with pytest.raises(CellTimeout, match="cell_timeout_s"):
        tiny_backend.generate(PROMPT, variant=VariantSpec.of("c", planted={"decode_delay": 50.0}), max_new_tokens=20, timeout_s=0.05)


@pytest.mark.parametrize("planted", [{"decode_delay": 0.25}, {"kv_copies": 2}, {"window": 64}])
def test_a_regression_planted_on_the_baseline_is_refused_at_parse(planted):
    from pytest_longctx.gate.spec import GateError, parse_gate

    gate = {"name": "g", "baseline": {"planted": planted}, "candidate": {}, "sweep": {"lengths": [512], "depths": [0.5]}}
    with pytest.raises(GateError, match=r"g.yaml: key 'baseline.planted': plants a regression on the baseline.*"
                                        r"Fix: plant regressions on the candidate"):
        parse_gate(gate, source="g.yaml")
    unplanted = parse_gate({**gate, "baseline": {}}).candidate
    assert parse_gate({**gate, "baseline": {}, "candidate": {"planted": planted}}).candidate != unplanted
