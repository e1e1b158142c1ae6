"""The long-context / retrieval / hybrid decision: each rule, the cost of each path, prefix reuse, KV shapes."""

from __future__ import annotations

import json

import pytest

from pytest_longctx.capacity.kv_budget import KvBudget
from pytest_longctx.capacity.kv_math import KvShape
from pytest_longctx.capacity.planning import gguf_config, model_kv_budget, plan

LLAMA_70B = KvShape(layers=80, kv_heads=8, head_dim=128, attention_heads=64)  # 320 KiB per token in bf16
PER_TOKEN = 2 * 80 * 8 * 128 * 2


def test_a_corpus_over_the_limit_that_needs_global_reasoning_goes_hybrid():
    result = plan(200_000, 131_072, global_reasoning=True, fresh_data=False, kv_shape=LLAMA_70B)

    assert result.recommendation == "hybrid"
    assert not result.fits
    assert result.usable_tokens == 131_072 - 64 - 256
    assert "does not fit the 131,072-token context limit" in result.reasons[0]
    assert "global reasoning" in result.reasons[1] and "budget_tokens: 130752" in result.reasons[1]
    hybrid = result.cost("hybrid")
    assert hybrid.context_tokens == result.usable_tokens
    assert hybrid.prefill_tokens == result.usable_tokens + 64
    assert hybrid.kv_bytes == PER_TOKEN * 131_072  # prompt and answer fill the context exactly
    assert hybrid.fits and not result.cost("long_context").fits


def test_a_corpus_over_the_limit_without_global_reasoning_goes_to_retrieval():
    result = plan(200_000, 131_072, global_reasoning=False, fresh_data=False, kv_shape=LLAMA_70B)

    assert result.recommendation == "retrieval"
    assert "no global reasoning" in result.reasons[1]
    retrieval = result.cost("retrieval")
    assert (retrieval.context_tokens, retrieval.prefill_tokens) == (2048, 2048 + 64)
    assert retrieval.kv_bytes == PER_TOKEN * (2048 + 64 + 256)


def test_a_corpus_that_fits_goes_long_context():
    result = plan(50_000, 131_072, global_reasoning=False, fresh_data=False, kv_shape=LLAMA_70B)

    assert result.recommendation == "long_context"
    assert result.fits
    assert "fits the 131,072-token context limit" in result.reasons[0]
    assert any("retrieval would prefill 2,112 tokens" in r for r in result.reasons)  # the cheaper alternative is named
    assert result.cost("long_context").kv_bytes == PER_TOKEN * (50_000 + 64 + 256)


def test_headroom_for_the_question_and_answer_decides_whether_it_fits():
    limit = 8192
    just_fits = plan(limit - 64 - 256, limit, global_reasoning=True, fresh_data=False, kv_shape=LLAMA_70B)
    one_over = plan(limit - 64 - 256 + 1, limit, global_reasoning=True, fresh_data=False, kv_shape=LLAMA_70B)

    assert just_fits.recommendation == "long_context" and just_fits.cost("long_context").fits
    assert one_over.recommendation == "hybrid" and not one_over.cost("long_context").fits


def test_fresh_data_and_a_large_corpus_without_global_reasoning_go_to_retrieval():
    result = plan(100_000, 131_072, global_reasoning=False, fresh_data=True, repeated_queries=5, kv_shape=LLAMA_70B)

    assert result.recommendation == "retrieval"
    assert "fits" in result.reasons[0] and "fresh" in result.reasons[1]
    assert not result.cost("long_context").prefix_reused  # fresh data: nothing to reuse
    assert result.cost("long_context").prefill_tokens_all == 5 * (100_000 + 64)


@pytest.mark.parametrize(
    ("corpus", "global_reasoning", "why"),
    [
        (10_000, False, "small enough"),  # fresh, but below large_corpus_tokens: prefilling it per query is cheap
        (100_000, True, "global reasoning needs all of it"),
    ],
)
def test_fresh_data_stays_long_context_when_small_or_global(corpus, global_reasoning, why):
    result = plan(corpus, 131_072, global_reasoning=global_reasoning, fresh_data=True, kv_shape=LLAMA_70B)

    assert result.recommendation == "long_context"
    assert any(why in r for r in result.reasons)


def test_repeated_queries_over_a_static_corpus_prefill_the_prefix_once():
    result = plan(50_000, 131_072, global_reasoning=True, fresh_data=False, repeated_queries=10, kv_shape=LLAMA_70B)
    long = result.cost("long_context")

    assert result.recommendation == "long_context"
    assert long.prefix_reused
    assert long.prefill_tokens_all == 50_000 + 10 * 64  # the corpus once, then only each question
    assert long.kv_bytes_all == PER_TOKEN * (50_000 + 10 * (64 + 256))  # the prefix's KV held once
    assert any("10 queries share the corpus as a prefix" in r and "90% saved" in r for r in result.reasons)
    # Retrieval's context changes with each question, so it has no shared prefix.
    retrieval = result.cost("retrieval")
    assert not retrieval.prefix_reused and retrieval.prefill_tokens_all == 10 * retrieval.prefill_tokens


def test_the_default_kv_shape_is_the_embedded_model_read_from_its_gguf_header():
    result = plan(4096, 8192, global_reasoning=False, fresh_data=False)

    assert result.model == "embedded:smollm2-135m-instruct"
    assert result.kv.shape == KvShape(layers=30, kv_heads=3, head_dim=64, attention_heads=9)
    assert result.kv.dtype == "bf16"
    assert plan(4096, 8192, global_reasoning=False, fresh_data=False, kv_dtype="fp8").kv.dtype == "fp8"


def test_a_model_directory_and_a_budget_give_the_shape(tmp_path):
    config = {"num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 512,
              "torch_dtype": "float16"}
    (tmp_path / "config.json").write_text(json.dumps(config))

    budget = model_kv_budget(str(tmp_path))
    assert budget.shape == KvShape(4, 2, 64, 8) and budget.dtype == "fp16"
    explicit = KvBudget.from_numbers(layers=2, kv_heads=1, head_dim=8)
    assert plan(100, 1000, global_reasoning=False, fresh_data=False, kv_shape=explicit).cost("long_context").kv_bytes == \
        explicit.sequence_bytes(100 + 64 + 256)


def test_gguf_config_reads_only_the_header(tmp_path):
    import struct

    def string(text: str) -> bytes:
        return struct.pack("<Q", len(text)) + text.encode()

    entries = [
        string("general.architecture") + struct.pack("<I", 8) + string("qwen2"),
        string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + string("a") + string("b") + string("c"),
        string("qwen2.block_count") + struct.pack("<II", 4, 28),
        string("qwen2.attention.head_count") + struct.pack("<II", 4, 28),
        string("qwen2.attention.head_count_kv") + struct.pack("<II", 4, 4),
        string("qwen2.embedding_length") + struct.pack("<II", 4, 3584),
    ]
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(entries)) + b"".join(entries))

    assert gguf_config(path) == {"num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                                 "hidden_size": 3584, "head_dim": None}
    (tmp_path / "bad.gguf").write_bytes(b"GGML")
    with pytest.raises(ValueError, match="not a GGUF file"):
        gguf_config(tmp_path / "bad.gguf")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"corpus_tokens": 0}, "corpus_tokens must be a positive integer"),
        ({"repeated_queries": 0}, "repeated_queries must be a positive integer"),
        ({"context_limit": 300}, "leaves no room beside the question"),
    ],
)
def test_bad_input_is_a_value_error(kwargs, message):
    args = {"corpus_tokens": 1000, "context_limit": 8192, "repeated_queries": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        plan(args["corpus_tokens"], args["context_limit"], global_reasoning=False, fresh_data=False,
             repeated_queries=args["repeated_queries"], kv_shape=LLAMA_70B)
