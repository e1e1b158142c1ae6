"""Reading a launched llama.cpp engine's log: its KV cache's size, and each request's prefix reuse."""

from __future__ import annotations

from pytest_longctx.backends.served.engine_log import kv_cache_from_log, prefill_from_log
from pytest_longctx.backends.served.metrics import EngineMetrics, kv_from_metrics, kv_from_props

# As llama-cpp-python 0.3.36 logged them on the embedded SmolLM2-135M with --n_ctx 4096 (f16, then --type_k 8 --type_v 8).
F16 = ("llama_context: constructing llama_context\nllama_kv_cache:        CPU KV buffer size =    90.00 MiB\n"
       "llama_kv_cache: size =   90.00 MiB (  4096 cells,  30 layers,  1/1 seqs), K (f16):   45.00 MiB, V (f16):   45.00 MiB\n")
Q8 = "llama_kv_cache: size =   47.81 MiB (  4096 cells,  30 layers,  1/1 seqs), K (q8_0):   23.91 MiB, V (q8_0):   23.91 MiB\n"


def test_the_kv_size_line_gives_cells_bytes_and_types() -> None:
    f16, q8 = kv_cache_from_log(F16), kv_cache_from_log(Q8)
    assert f16 is not None and q8 is not None
    assert (f16.bytes, f16.cells, f16.layers, f16.seqs, f16.k_type, f16.v_type) == (90 * 2**20, 4096, 30, 1, "f16", "f16")
    assert (q8.bytes, q8.k_type) == (round(47.81 * 2**20), "q8_0")
    assert kv_cache_from_log("llama_context: n_ctx = 4096\n") is None


def test_a_relaunch_appended_to_the_log_is_read_from_its_last_context() -> None:
    assert kv_cache_from_log(F16 + F16.replace("90.00 MiB (  4096", "45.00 MiB (  2048")).cells == 2048  # type: ignore[union-attr]


def test_sliding_window_models_sum_their_two_caches() -> None:
    iswa = ("llama_context: constructing llama_context\n"
            "llama_kv_cache_iswa: size =   80.00 MiB (  8192 cells,   4 layers,  2/2 seqs), K (f16):   40.00 MiB, V (f16):   40.00 MiB\n"
            "llama_kv_cache_iswa: size =   10.00 MiB (  1024 cells,  20 layers,  2/2 seqs), K (f16):    5.00 MiB, V (f16):    5.00 MiB\n")
    kv = kv_cache_from_log(iswa)
    assert kv is not None and (kv.bytes, kv.cells, kv.layers, kv.seqs) == (90 * 2**20, 8192, 24, 2)


def test_a_request_segment_says_what_it_reused() -> None:
    hit = prefill_from_log("Llama.generate: 377 prefix-match hit, remaining 135 prompt tokens to eval\n"
                           "llama_perf_context_print: prompt eval time =     843.83 ms /   135 tokens (  6.25 ms per token)\n")
    assert (hit.reused, hit.evaluated, hit.full_hit) == (377, 135, False)
    full = prefill_from_log("Llama.generate: full prompt already cached, skipping reset\n")
    assert full.full_hit and full.evaluated is None
    assert prefill_from_log("INFO:     127.0.0.1:35314 - \"POST /v1/completions HTTP/1.1\" 200 OK\n").reused == 0


def test_llama_server_props_and_vllm_metrics_give_capacity_without_bytes() -> None:
    props = kv_from_props({"default_generation_settings": {"n_ctx": 8192}, "total_slots": 4})
    assert props is not None and (props.capacity_tokens, props.bytes, props.slots, props.sequences(4096)) == (8192, None, 4, 2)
    assert kv_from_props({"total_slots": 4}) is None
    vllm = kv_from_metrics(EngineMetrics("vllm", kv_capacity_tokens=16 * 1000, block_size=16, num_gpu_blocks=1000))
    assert vllm is not None and (vllm.capacity_tokens, vllm.bytes_per_token, vllm.sequences(4096)) == (16000, None, 3)
    assert kv_from_metrics(EngineMetrics("llamacpp", kv_tokens=10)) is None
