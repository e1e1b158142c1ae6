"""Prometheus text parsing and the KV figures read from vLLM's and llama.cpp's /metrics."""

from __future__ import annotations

import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pytest_longctx.backends.served.metrics import (
    CACHE_DTYPE_BYTES,
    MetricsFormatError,
    parse_prometheus,
    read_engine_metrics,
    scrape,
)
from pytest_longctx.capacity.kv_math import KvShape

# The shape of a vLLM V1 (0.10) /metrics body: prometheus_client output, the info gauge's labels in the
# order vLLM writes them, series labelled per engine and model. Histograms trimmed.
VLLM_V1 = """\
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 12011.0
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-0.6B"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen3-0.6B"} 0.0390625
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="Qwen/Qwen3-0.6B"} 40960.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="Qwen/Qwen3-0.6B"} 30720.0
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="fp8",calculate_kv_scales="False",cpu_offload_gb="0",enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.9",is_attention_free="False",kv_sharing_fast_prefill="False",mamba_page_size_padded="None",num_cpu_blocks="None",num_gpu_blocks="2048",num_gpu_blocks_override="None",prefix_caching_hash_algo="builtin",sliding_window="None",swap_space="4"} 1.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="Qwen/Qwen3-0.6B"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="Qwen/Qwen3-0.6B"} 12.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="Qwen/Qwen3-0.6B"} 1.75
"""  # noqa: E501 - a verbatim vLLM /metrics line (cache_config_info) is longer than any code line

# vLLM V0 (0.6): other gauge names, usage and hit rate as gauges, no per-token prefix counters.
VLLM_V0 = """\
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="False",num_gpu_blocks="81767"} 1.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="Qwen/Qwen2.5-Coder-1.5B-Instruct"} 0.5
"""

# llama.cpp's llama-server --metrics before the unified KV cache (2024 builds): it counted the cache's tokens.
LLAMACPP_2024 = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 6886
# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 means 100 percent usage.
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.125
# HELP llamacpp:kv_cache_tokens KV-cache tokens.
# TYPE llamacpp:kv_cache_tokens gauge
llamacpp:kv_cache_tokens 512
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
"""

# Current llama-server: the KV gauges are gone; only throughput counters and a lifetime high-water mark.
LLAMACPP_NOW = """\
llamacpp:prompt_tokens_total 96641
llamacpp:tokens_predicted_total 23210
llamacpp:n_tokens_max 42094
llamacpp:requests_processing 0
"""

SMOLLM = KvShape(layers=30, kv_heads=3, head_dim=64, attention_heads=9)


def test_samples_keep_labels_values_and_specials():
    samples = parse_prometheus(
        '# HELP x help text with "quotes"\n'
        'a_metric{path="/v1/x",msg="say \\"hi\\"\\nback\\\\slash"} 3.5 1700000000000\n'
        "plain 1e3\n"
        'inf_metric{le="+Inf"} +Inf\n'
        "nan_metric NaN\n"
        "# EOF\n"
    )
    assert [s.name for s in samples] == ["a_metric", "plain", "inf_metric", "nan_metric"]
    assert samples[0].label("path") == "/v1/x"
    assert samples[0].label("msg") == 'say "hi"\nback\\slash'
    assert samples[0].value == 3.5  # the timestamp is not the value
    assert samples[1].value == 1000.0
    assert samples[2].value == math.inf
    assert math.isnan(samples[3].value)


def test_label_values_may_hold_braces_commas_and_spaces():
    (sample,) = parse_prometheus('m{a="x} {y}, z",b="2"} 7\n')
    assert sample.labels == (("a", "x} {y}, z"), ("b", "2"))
    assert sample.value == 7.0


@pytest.mark.parametrize("line", ["just_a_name", 'm{a=unquoted} 1', "m{a=\"open} 1", "m notanumber"])
def test_a_broken_line_is_named(line):
    with pytest.raises(MetricsFormatError, match="line 2"):
        parse_prometheus(f"ok 1\n{line}\n")


def test_vllm_v1_kv_blocks_dtype_and_prefix_cache():
    metrics = read_engine_metrics(VLLM_V1)
    assert metrics.engine == "vllm"
    assert (metrics.block_size, metrics.num_gpu_blocks, metrics.cache_dtype) == (16, 2048, "fp8")
    assert metrics.kv_capacity_tokens == 16 * 2048
    assert metrics.kv_usage == pytest.approx(0.0390625)
    # 0.0390625 of 2048 blocks is 80 blocks of 16 tokens.
    assert metrics.kv_tokens_used == 1280
    assert metrics.prefix_cache_hit_rate == pytest.approx(0.75)
    assert metrics.requests_running == 1.0
    # fp8 is one byte per element: 2 (K and V) x 30 layers x 3 heads x 64 dims x 1280 tokens.
    assert metrics.kv_bytes_used(SMOLLM) == 2 * 30 * 3 * 64 * 1280


def test_vllm_v0_names_are_read_too():
    metrics = read_engine_metrics(VLLM_V0)
    assert metrics.engine == "vllm"
    assert metrics.kv_usage == 0.5
    assert metrics.cache_dtype == "auto"
    assert metrics.prefix_cache_hit_rate is None  # V0 exports no per-token counters
    assert metrics.kv_tokens_used == round(0.5 * 81767) * 16
    assert metrics.kv_bytes_used(SMOLLM) == SMOLLM.bytes_per_token(2.0) * round(0.5 * 81767) * 16


def test_data_parallel_engines_sum_blocks_and_average_usage():
    text = (
        'vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="0",num_gpu_blocks="1000"} 1.0\n'
        'vllm:cache_config_info{block_size="16",cache_dtype="auto",engine="1",num_gpu_blocks="1000"} 1.0\n'
        'vllm:kv_cache_usage_perc{engine="0"} 0.2\n'
        'vllm:kv_cache_usage_perc{engine="1"} 0.4\n'
    )
    metrics = read_engine_metrics(text)
    assert metrics.num_gpu_blocks == 2000
    assert metrics.block_size == 16
    assert metrics.kv_tokens_used == 600 * 16


def test_vllm_capacity_label_is_used_when_blocks_are_not_numbers():
    text = 'vllm:cache_config_info{block_size="16",kv_cache_size_tokens="123433",num_gpu_blocks="None"} 1.0\nvllm:kv_cache_usage_perc 0.5\n'
    metrics = read_engine_metrics(text)
    assert metrics.num_gpu_blocks is None
    assert metrics.kv_capacity_tokens == 123433
    assert metrics.kv_tokens_used == round(0.5 * 123433)


def test_llamacpp_token_count_needs_the_element_size():
    metrics = read_engine_metrics(LLAMACPP_2024)
    assert metrics.engine == "llamacpp"
    assert (metrics.kv_tokens, metrics.kv_usage, metrics.requests_running) == (512, 0.125, 1.0)
    assert metrics.kv_bytes_used(SMOLLM) is None  # llama.cpp does not say its cache type
    q8 = CACHE_DTYPE_BYTES["q8_0"]
    assert q8 == pytest.approx(1.0625)
    assert metrics.kv_bytes_used(SMOLLM, q8) == round(SMOLLM.bytes_per_token(q8) * 512)


def test_current_llamacpp_reports_no_kv_figure():
    metrics = read_engine_metrics(LLAMACPP_NOW)
    assert metrics.engine == "llamacpp"
    assert metrics.kv_tokens_used is None
    assert metrics.kv_bytes_used(SMOLLM, 2.0) is None


def test_other_exporters_are_unknown():
    assert read_engine_metrics("process_cpu_seconds_total 3.2\n").engine == "unknown"


class _Exporter(BaseHTTPRequestHandler):
    body = b""
    status = 200

    def do_GET(self):
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def exporter():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_scrape_reads_a_live_endpoint_and_none_without_one(exporter):
    url = f"http://127.0.0.1:{exporter.server_address[1]}"
    _Exporter.status, _Exporter.body = 200, VLLM_V1.encode()
    assert scrape(url).num_gpu_blocks == 2048
    _Exporter.status, _Exporter.body = 501, b'{"error": "metrics disabled"}'  # llama-server without --metrics
    assert scrape(url) is None
    _Exporter.status, _Exporter.body = 200, b"<html>not metrics</html>"
    assert scrape(url) is None
