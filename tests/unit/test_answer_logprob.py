"""The answer log-probability a generation reports: teacher-forced on the very cache the side used, and free."""

from __future__ import annotations

import pytest
import torch

from pytest_longctx.backends.prefix_reuse import PrefixStore
from pytest_longctx.gate.spec import VariantSpec

PROMPT = list(range(5, 69)) * 2
VALUES = ("K7-x", "Qz")


def _reference(model, prompt, values) -> float:
    """log p(value | prompt) summed over values, from one full forward pass per value (no cache involved)."""
    total = 0.0
    with torch.inference_mode():
        for value in values:
            ids = [(ord(c) - 32) % 90 for c in value]
            logits = model(input_ids=torch.tensor([list(prompt) + ids])).logits[0].float()
            steps = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
            total += float(sum(steps[i, t] for i, t in enumerate(ids)))
    return total


def test_full_cache_logprob_matches_a_fresh_forward_pass(tiny_backend, tiny_llama):
    gen = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=8, expected=VALUES)

    assert gen.answer_logprob == pytest.approx(_reference(tiny_llama, PROMPT, VALUES), abs=1e-3)


def test_measuring_it_leaves_the_answer_and_the_cache_figures_alone(tiny_backend):
    for variant in (VariantSpec("b"), VariantSpec.of("c", kv_cache_dtype="int4"),
                    VariantSpec.of("w", attention={"window": 32, "sink_tokens": 4}), VariantSpec.of("p", planted={"window": 40})):
        plain = tiny_backend.generate(PROMPT, variant=variant, max_new_tokens=8)
        measured = tiny_backend.generate(PROMPT, variant=variant, max_new_tokens=8, expected=VALUES)
        assert plain.answer_logprob is None and measured.answer_logprob is not None
        assert (measured.answer, measured.kv_bytes, measured.kv_tokens) == (plain.answer, plain.kv_bytes, plain.kv_tokens)


def test_each_change_is_seen_by_the_logprob(tiny_backend, tiny_llama):
    full = _reference(tiny_llama, PROMPT, VALUES)
    seen = {}
    for name, settings in {
        "int4": {"kv_cache_dtype": "int4"},
        "window": {"attention": {"window": 16, "sink_tokens": 4}},
        "planted": {"planted": {"window": 24}},
    }.items():
        seen[name] = tiny_backend.generate(PROMPT, variant=VariantSpec.of(name, **settings), max_new_tokens=4,
                                           expected=VALUES).answer_logprob
    # Each side answers from another cache than the full one, and its log-probability says so.
    assert all(abs(value - full) > 1e-3 for value in seen.values()), seen
    # A window wider than the prompt and its answer is the full computation, through the windowed path.
    wide = tiny_backend.generate(PROMPT, variant=VariantSpec.of("wide", attention={"window": 4096}), max_new_tokens=4,
                                 expected=VALUES)
    assert wide.answer_logprob == pytest.approx(full, abs=1e-3)


def test_a_reused_prefix_gives_the_same_logprob_as_a_fresh_run(tiny_backend):
    store = PrefixStore()
    other = PROMPT[:100] + list(range(70, 90))
    tiny_backend.generate(other, variant=VariantSpec("b"), max_new_tokens=4, reuse=store)
    reused = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=4, reuse=store, expected=VALUES)
    fresh = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=4, expected=VALUES)

    assert reused.reused_tokens == 100
    assert reused.answer_logprob == pytest.approx(fresh.answer_logprob, abs=1e-3)
