"""KV budgets: the worked example exactly, configs of several families, windows, prefix reuse, and measure()."""

from __future__ import annotations

import pytest

from pytest_longctx.capacity.kv_budget import GIB, KvBudget, dtype_bytes, dtype_name, format_bytes
from pytest_longctx.capacity.kv_math import KvShape

TOKENS = 131072


@pytest.fixture
def seventy_b():
    """The standard worked example: 80 layers, 8 KV heads of 128 (64 query heads), BF16."""
    return KvBudget.from_numbers(layers=80, kv_heads=8, head_dim=128, attention_heads=64, dtype="bf16")


def test_worked_example_is_exact(seventy_b):
    assert seventy_b.bytes_per_token() == 327_680
    assert seventy_b.sequence_bytes(TOKENS) == 40 * GIB
    assert seventy_b.mha().sequence_bytes(TOKENS) == 320 * GIB
    assert seventy_b.with_kv_heads(64).sequence_bytes(TOKENS) == 320 * GIB
    assert seventy_b.sequence_bytes(TOKENS, "fp8") == 20 * GIB
    assert seventy_b.with_dtype("fp8").sequence_bytes(TOKENS) == 20 * GIB
    assert seventy_b.sequence_bytes(TOKENS, 1) == 20 * GIB
    assert seventy_b.admitted_sequences(64 * GIB, TOKENS) == 1
    assert seventy_b.admitted_sequences(64 * GIB, TOKENS, "fp8") == 3
    assert seventy_b.total_bytes(TOKENS, 4) == 160 * GIB


def test_relative_costs(seventy_b):
    assert seventy_b.relative_to_mha() == 0.125
    assert seventy_b.mqa().relative_to_mha() == 1 / 64
    assert seventy_b.mqa().sequence_bytes(TOKENS) == 5 * GIB
    assert seventy_b.relative_dtype_cost("fp8") == 0.5
    assert seventy_b.relative_dtype_cost("fp8", baseline="fp32") == 0.25
    with pytest.raises(ValueError, match="divide the 64 attention heads"):
        seventy_b.with_kv_heads(7)


def test_prefix_reuse_counts_tokens_not_prefilled(seventy_b):
    reuse = seventy_b.prefix_reuse(4096, 10, suffix_tokens=512)

    assert reuse.tokens_not_prefilled == 9 * 4096
    assert reuse.prefill_tokens_without == 10 * (4096 + 512)
    assert reuse.prefill_tokens_with == 4096 + 10 * 512
    assert reuse.prefill_fraction_saved == pytest.approx(9 * 4096 / (10 * 4608))
    assert reuse.kv_bytes_saved == 9 * seventy_b.sequence_bytes(4096)
    assert seventy_b.prefix_reuse(0, 3).kv_bytes_saved == 0


def test_scales_match_the_gate_analytic():
    budget = KvBudget.from_numbers(layers=2, kv_heads=3, head_dim=64, attention_heads=9, dtype="fp32")
    shape = KvShape(2, 3, 64, 9)

    for scale in (None, "token_head", "tensor", "channel"):
        assert budget.sequence_bytes(100, "fp8", scale=scale) == shape.sequence_bytes(100, 1, scale=scale)


def test_dtype_names():
    assert dtype_bytes("bf16") == dtype_bytes("bfloat16") == dtype_bytes("torch.bfloat16") == 2
    assert dtype_bytes("FP8_E5M2") == 1 and dtype_bytes("int4") == 0.5 and dtype_bytes(3) == 3
    assert dtype_name("torch.float32") == "fp32" and dtype_name("float16") == "fp16" and dtype_name(2) == "2B"
    assert dtype_bytes(dtype_name(2)) == 2
    with pytest.raises(ValueError, match="unknown dtype 'fp7'"):
        dtype_bytes("fp7")
    with pytest.raises(ValueError, match="positive"):
        dtype_bytes(0)


def test_bad_numbers_are_rejected(seventy_b):
    with pytest.raises(ValueError, match="layers must be a positive integer"):
        KvBudget.from_numbers(layers=0, kv_heads=8, head_dim=128)
    with pytest.raises(ValueError, match="length must be a positive integer"):
        seventy_b.sequence_bytes(-5)
    with pytest.raises(ValueError, match="memory_budget_bytes"):
        seventy_b.admitted_sequences(-1, 10)


def test_format_bytes():
    assert format_bytes(40 * GIB) == "40 GiB"
    assert format_bytes(327_680) == "320 KiB"
    assert format_bytes(20.625 * GIB) == "20.62 GiB"
    assert format_bytes(100) == "100 B"


# --- configs -------------------------------------------------------------------------------------------------

LLAMA_70B = {
    "model_type": "llama", "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
    "hidden_size": 8192, "torch_dtype": "bfloat16",
}


@pytest.mark.parametrize(
    ("config", "shape"),
    [
        (LLAMA_70B, KvShape(80, 8, 128, 64)),
        ({"model_type": "gpt2", "n_layer": 12, "n_head": 12, "n_embd": 768}, KvShape(12, 12, 64, 12)),  # MHA
        ({"model_type": "gpt_bigcode", "n_layer": 40, "n_head": 48, "n_embd": 6144, "multi_query": True},
         KvShape(40, 1, 128, 48)),  # MQA
        ({"model_type": "falcon", "num_hidden_layers": 60, "num_attention_heads": 128, "num_kv_heads": 8,
          "hidden_size": 8192, "new_decoder_architecture": True}, KvShape(60, 8, 64, 128)),
        ({"model_type": "chatglm", "num_layers": 28, "num_attention_heads": 32, "multi_query_attention": True,
          "multi_query_group_num": 2, "kv_channels": 128, "hidden_size": 4096}, KvShape(28, 2, 128, 32)),
        ({"model_type": "gemma", "num_hidden_layers": 18, "num_attention_heads": 8, "num_key_value_heads": 1,
          "head_dim": 256, "hidden_size": 2048}, KvShape(18, 1, 256, 8)),  # explicit head_dim wins
        ({"model_type": "llava", "text_config": LLAMA_70B}, KvShape(80, 8, 128, 64)),  # nested text config
    ],
)
def test_config_families(config, shape):
    assert KvBudget.from_config(config).shape == shape


def test_config_dtype_is_the_default_dtype():
    assert KvBudget.from_config(LLAMA_70B).dtype == "bf16"
    assert KvBudget.from_config({**LLAMA_70B, "torch_dtype": "float32"}).dtype == "fp32"
    assert KvBudget.from_config(LLAMA_70B, dtype="fp8").dtype == "fp8"
    assert KvBudget.from_config({**LLAMA_70B, "torch_dtype": None}).dtype == "bf16"


def test_every_layer_sliding_counts_at_most_the_window():
    mistral = {"model_type": "mistral", "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
               "hidden_size": 4096, "sliding_window": 4096}
    budget = KvBudget.from_config(mistral)

    assert budget.windows == (4096,) * 32
    assert budget.sequence_bytes(2048) == 2048 * budget.bytes_per_token()
    assert budget.sequence_bytes(32768) == budget.sequence_bytes(4096) == 4096 * budget.bytes_per_token()
    assert KvBudget.from_config({**mistral, "sliding_window": None}).windows is None


def test_interleaved_windows():
    base = {"num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 32,
            "hidden_size": 256, "sliding_window": 100}
    gemma2 = KvBudget.from_config({**base, "model_type": "gemma2"})
    gemma3 = KvBudget.from_config({**base, "model_type": "gemma3_text", "sliding_window_pattern": 3})
    qwen2 = KvBudget.from_config({**base, "model_type": "qwen2", "use_sliding_window": True, "max_window_layers": 4})
    qwen2_off = KvBudget.from_config({**base, "model_type": "qwen2", "use_sliding_window": False, "max_window_layers": 4})
    typed = KvBudget.from_config({**base, "layer_types": ["sliding_attention", "full_attention"] * 3})

    assert gemma2.windows == (100, None) * 3
    assert gemma3.windows == (100, 100, None) * 2
    assert qwen2.windows == (None,) * 4 + (100, 100)
    assert qwen2_off.windows is None
    assert typed.windows == (100, None) * 3
    per_layer_token = 2 * 4 * 32 * 2
    assert typed.sequence_bytes(1000) == 3 * per_layer_token * 1000 + 3 * per_layer_token * 100
    assert typed.sequence_bytes(50) == 6 * per_layer_token * 50
    token_head = typed.sequence_bytes(1000, "fp8", scale="token_head") - typed.sequence_bytes(1000, "fp8")
    assert token_head == 2 * 4 * 4 * (3 * 1000 + 3 * 100)
    channel = typed.sequence_bytes(1000, "int8", scale="channel") - typed.sequence_bytes(1000, "int8")
    assert channel == 6 * 2 * 4 * 32 * 4
    with pytest.raises(ValueError, match="granularity"):
        typed.sequence_bytes(10, scale="block")


def test_layer_types_without_kv_and_unknown_kinds():
    base = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}
    hybrid = KvBudget.from_config({**base, "layer_types": ["linear_attention", "full_attention"]})

    assert hybrid.windows == (0, None)
    assert hybrid.sequence_bytes(10) == 2 * 4 * 16 * 10 * 2
    with pytest.raises(ValueError, match="unknown layer type 'cross_attention'"):
        KvBudget.from_config({**base, "layer_types": ["cross_attention", "full_attention"]})


def test_unusable_configs_name_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="none of num_hidden_layers.*pass --layers"):
        KvBudget.from_config({"num_attention_heads": 4})
    with pytest.raises(ValueError, match="kv_lora_rank"):
        KvBudget.from_config({**LLAMA_70B, "kv_lora_rank": 512})
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="config.json: cannot read"):
        KvBudget.from_json(bad)


def test_transformers_config_object_agrees_with_kv_math():
    from tests.conftest import tiny_llama_config

    config = tiny_llama_config()
    budget = KvBudget.from_config(config, dtype="fp32")

    assert budget.shape == KvShape.from_config(config)
    assert budget.windows is None


# --- measure() ------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_handle(tiny_backend):
    from pytest_longctx.testing.model import ModelHandle

    return ModelHandle(tiny_backend)


@pytest.mark.parametrize(("kv_cache_dtype", "dtype", "scale"), [("auto", None, None), ("fp8", "fp8", "token_head")])
def test_measure_records_generations_at_their_analytic_size(tiny_handle, kv_cache_dtype, dtype, scale):
    budget = KvBudget.for_model(tiny_handle)
    model = tiny_handle.variant(kv_cache_dtype=kv_cache_dtype)

    with budget.measure() as measured:
        generation = model.generate(list(range(3, 60)), max_new_tokens=4)

    assert budget.dtype == "fp32"
    assert measured.generations == [generation]
    assert measured.kv_tokens == generation.kv_tokens == 57 + generation.new_tokens - 1
    assert measured.kv_bytes == budget.sequence_bytes(measured.kv_tokens, dtype, scale=scale) == measured.analytic_bytes
    assert measured.peak_bytes is None  # CPU


def test_measure_keeps_the_largest_cache_and_nests(tiny_handle):
    budget = KvBudget.for_model(tiny_handle)

    tiny_handle.generate([5, 6, 7], max_new_tokens=1)  # outside any block: not recorded
    with budget.measure() as outer:
        tiny_handle.generate(list(range(3, 40)), max_new_tokens=1)
        with budget.measure() as inner:
            tiny_handle.generate(list(range(3, 20)), max_new_tokens=1)

    assert [r.tokens for r in outer.records] == [37, 17]
    assert outer.kv_tokens == 37 and inner.kv_tokens == 17


def test_measure_takes_caches_and_numbers(tiny_llama):
    import torch

    from pytest_longctx.backends.kv_cache import cache_keyword, make_cache

    budget = KvBudget.for_model(tiny_llama)
    cache = make_cache("auto", tiny_llama.config)
    with budget.measure() as measured:
        with torch.inference_mode():
            tiny_llama(input_ids=torch.tensor([list(range(3, 23))]), use_cache=True, **{cache_keyword(tiny_llama): cache})
        measured.record_cache(cache)
        measured.record(10, tokens=1)

    assert measured.kv_bytes == budget.sequence_bytes(20) and measured.kv_tokens == 20
    assert measured.analytic_bytes is None


def test_empty_measure_says_what_to_do(tiny_handle):
    with KvBudget.for_model(tiny_handle).measure() as measured:
        pass

    with pytest.raises(RuntimeError, match="nothing was measured"):
        measured.kv_bytes  # noqa: B018 - reading the property is what raises
