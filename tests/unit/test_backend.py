from __future__ import annotations

import pytest
import torch

from pytest_longctx.gate_spec import VariantSpec
from pytest_longctx.kv_math import KvShape

PROMPT = list(range(5, 69))


def test_greedy_loop_matches_transformers_generate(tiny_backend, tiny_llama):
    gen = tiny_backend.generate(PROMPT, variant=VariantSpec("baseline"), max_new_tokens=12)
    with torch.inference_mode():
        ref = tiny_llama.generate(torch.tensor([PROMPT]), max_new_tokens=12, do_sample=False, eos_token_id=0, pad_token_id=0)
    ref_new = ref[0, len(PROMPT):].tolist()
    assert gen.new_tokens == len(ref_new)
    assert gen.answer == tiny_backend.tokenizer.decode(ref_new)


@pytest.mark.parametrize("dtype,elem,scale", [("auto", 4, None), ("fp8_e4m3", 1, "token_head")])
def test_generation_reports_timings_and_kv_bytes_at_the_final_length(tiny_backend, dtype, elem, scale):
    gen = tiny_backend.generate(PROMPT, variant=VariantSpec("v", kv_cache_dtype=dtype), max_new_tokens=6)
    # The last sampled token is never fed back, so the cache holds prompt + new - 1 tokens.
    assert gen.kv_tokens == len(PROMPT) + gen.new_tokens - 1
    expected = KvShape.from_config(tiny_backend.model.config).sequence_bytes(gen.kv_tokens, elem, scale=scale)
    assert gen.kv_bytes == gen.kv_bytes_analytic == expected
    assert 0 < gen.prefill_s <= gen.total_s
    assert gen.peak_bytes is None  # CPU: no CUDA peak to report


def test_fp8_variant_uses_a_quarter_of_fp32_kv_plus_scales(tiny_backend):
    base = tiny_backend.generate(PROMPT, variant=VariantSpec("b"), max_new_tokens=1)
    fp8 = tiny_backend.generate(PROMPT, variant=VariantSpec("c", kv_cache_dtype="fp8"), max_new_tokens=1)
    head_dim = KvShape.from_config(tiny_backend.model.config).head_dim
    assert fp8.kv_bytes / base.kv_bytes == pytest.approx((1 + 4 / head_dim) / 4)
