"""A real engine: the embedded GGUF served by llama-cpp-python's OpenAI-compatible server, launched per KV type."""

from __future__ import annotations

import importlib.util
import os
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from pytest_longctx.backends.served import coldness
from pytest_longctx.backends.served.client import PromptTokenMismatch, ServedBackend
from pytest_longctx.backends.served.coldness import WarmCacheError
from pytest_longctx.backends.served.engine_log import LogCursor, kv_cache_from_log, prefill_from_log
from pytest_longctx.backends.served.launch import LaunchSpec, launched
from pytest_longctx.backends.served.remote_tokenizer import RemoteTokenizer
from pytest_longctx.capacity.kv_math import KvShape
from pytest_longctx.gate.spec import VariantSpec
from pytest_longctx.tasks.haystack import build_haystack


def _server_installed() -> bool:
    # find_spec, not import: importing llama_cpp loads its shared library, which a skip should not cost.
    modules = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")
    return all(importlib.util.find_spec(name) is not None for name in modules)


@pytest.fixture(scope="module", autouse=True)
def _needs_the_engine():
    if _server_installed():
        return
    if os.environ.get("CI"):
        pytest.fail(
            "llama-cpp-python[server] is missing but CI is set: the served-engine tests must run in CI (make llama-cpp; .ci/run does it)"
        )
    pytest.skip(
        "llama-cpp-python[server] is not installed (make llama-cpp builds it, in about 6 minutes); CI builds it and runs these tests"
    )


pytestmark = pytest.mark.slow

# llama-cpp-python runs one sequence at a time and by default aborts a running request when another arrives.
# One thread: on a busy 2-core machine ggml's spinning thread barrier made decoding with two threads 70 times
# slower (4.7 s against 0.067 s per token, measured). Logits for the last position only.
SERVE = (
    "{python} -m llama_cpp.server --model {model} --host 127.0.0.1 --port {port} --n_ctx 4096"
    " --n_threads 1 --n_threads_batch 1 --logits_all false --interrupt_requests false"
)
# ggml type 8 is q8_0; a quantized V cache needs flash attention.
SERVE_Q8 = SERVE + " --type_k 8 --type_v 8 --flash_attn true"
Q8_0_BYTES = 34 / 32  # 32 int8 values and one fp16 scale per block
LENGTH = 512
CELLS = ((1, 0.5), (2, 0.5))  # (seed, depth): needles this 135M model finds at 512 tokens
F16 = VariantSpec(name="baseline")
Q8 = VariantSpec.of("candidate", kv_cache_dtype="int8")


@pytest.fixture(scope="module")
def kv_shape(smollm_tokenizer) -> KvShape:
    from transformers import AutoConfig

    return KvShape.from_config(AutoConfig.from_pretrained(smollm_tokenizer.name_or_path))


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llama-server")


@pytest.fixture(scope="module")
def servers(logs):
    """An f16-KV and a q8_0-KV server of the embedded model, as two variants would be launched."""
    from pytest_longctx.backends.loading import resolve

    gguf = str(resolve("embedded:smollm2-135m-instruct").gguf_path)
    with ExitStack() as stack:
        yield {
            name: stack.enter_context(launched(LaunchSpec(command, ready_timeout_s=120), model=gguf, log_path=logs / f"{name}.log"))
            for name, command in (("f16", SERVE), ("q8_0", SERVE_Q8))
        }


@pytest.fixture(scope="module")
def server_tokenizer(servers, smollm_tokenizer) -> RemoteTokenizer:
    """Token ids from the engine itself, with the embedded tokenizer's chat template and decoding."""
    return RemoteTokenizer(servers["f16"], local=smollm_tokenizer)


@pytest.fixture(scope="module")
def haystacks(server_tokenizer):
    return [build_haystack(server_tokenizer, length=LENGTH, depth=depth, seed=seed) for seed, depth in CELLS]


def test_prompts_tokenized_elsewhere_are_refused_not_skewed(servers, smollm_tokenizer, kv_shape):
    """llama-cpp-python takes no token ids, and its tokenizer keeps "\\n\\n" whole where SmolLM2's Hugging Face
    tokenizer splits it before a digit: a prompt built with the latter is one token shorter on this server."""
    hay = build_haystack(smollm_tokenizer, length=192, depth=0.5, seed=0)  # short, but with a filler line after the "\n\n"
    served = ServedBackend([servers["f16"]], tokenizer=smollm_tokenizer, kv_shape=kv_shape, timeout_s=120)
    with pytest.raises(PromptTokenMismatch, match=r"counted 191 prompt tokens, but the prompt has 192 \(sent as text"):
        served.generate(hay.token_ids, variant=F16, max_new_tokens=1)
    assert served._ids_rejected  # it offered token ids first


def test_f16_kv_finds_the_needles_token_exact(servers, server_tokenizer, kv_shape, haystacks):
    served = ServedBackend([servers["f16"]], tokenizer=server_tokenizer, kv_shape=kv_shape, timeout_s=120)
    for hay in haystacks:
        assert hay.tokens == LENGTH
        gen = served.generate(hay.token_ids, variant=F16, max_new_tokens=24)
        assert gen.prompt_tokens == LENGTH  # the server counted the same 512 tokens (a mismatch raises)
        assert hay.answer in gen.answer, f"seed {hay.seed} depth {hay.depth}: {gen.answer!r}"
        assert gen.prefill_s > 0 and gen.decode_s_per_token is not None and gen.decode_s_per_token > 0
        assert gen.total_s > gen.prefill_s
        assert 1 <= gen.new_tokens <= 24
        assert gen.kv_tokens == LENGTH + gen.new_tokens - 1
        # llama-cpp-python exports no /metrics: the KV figure is the f16 estimate, and says so.
        assert gen.kv_source == "analytic"
        assert gen.kv_bytes == gen.kv_bytes_analytic == kv_shape.sequence_bytes(gen.kv_tokens, 2.0)


def test_q8_0_kv_server_answers(servers, server_tokenizer, kv_shape, haystacks):
    served = ServedBackend([servers["q8_0"]], tokenizer=server_tokenizer, kv_shape=kv_shape, kv_bytes_per_element=Q8_0_BYTES, timeout_s=120)
    hay = haystacks[0]
    gen = served.generate(hay.token_ids, variant=Q8, max_new_tokens=24)
    assert gen.prompt_tokens == LENGTH
    assert hay.answer in gen.answer, gen.answer  # 8-bit K and V at 512 tokens still recall
    assert gen.prefill_s > 0 and gen.decode_s_per_token is not None and gen.decode_s_per_token > 0
    assert gen.kv_bytes == gen.kv_bytes_analytic == kv_shape.sequence_bytes(gen.kv_tokens, Q8_0_BYTES)


def test_early_stop_ends_the_answer_at_the_needle(servers, server_tokenizer, haystacks):
    hay = haystacks[-1]  # the f16 server's last prompt: llama-cpp-python reuses its cached prefix, so this is quick
    served = ServedBackend([servers["f16"]], tokenizer=server_tokenizer, timeout_s=120)
    gen = served.generate(hay.token_ids, variant=F16, max_new_tokens=24, stop=lambda text: hay.answer in text)
    assert gen.stopped_early and not gen.hit_limit
    assert gen.answer.endswith(hay.answer)
    assert gen.prompt_tokens == LENGTH  # counted by a separate request: the closed stream sent no usage


def test_the_engine_logs_its_kv_cache_and_a_repeated_prompt_hits_its_prefix_cache(servers, logs, server_tokenizer, haystacks,
                                                                                 monkeypatch):
    """llama-cpp-python reuses the prefix a prompt shares with the previous one; without the flush a timed repeat
    is served from cache, and the gate refuses to time it; with the flush it is verified cold."""
    f16, q8 = kv_cache_from_log((logs / "f16.log").read_text()), kv_cache_from_log((logs / "q8_0.log").read_text())
    assert (f16.cells, f16.seqs, f16.k_type, f16.v_type, f16.bytes) == (4096, 1, "f16", "f16", 90 * 2**20)
    assert (q8.cells, q8.k_type, q8.v_type) == (4096, "q8_0", "q8_0") and q8.bytes == pytest.approx(47.81 * 2**20, abs=2**20 / 100)
    hay = haystacks[0]
    served = ServedBackend([servers["f16"]], tokenizer=server_tokenizer, timeout_s=120, server_log=logs / "f16.log")
    served.generate(hay.token_ids, variant=F16, max_new_tokens=1)
    cursor = LogCursor(logs / "f16.log")
    cursor.mark()
    served.generate(hay.token_ids, variant=F16, max_new_tokens=1)  # untimed: the engine's cache serves it
    repeat = prefill_from_log(cursor.since_mark(wait_for="prompt eval time", timeout_s=10))
    assert repeat.full_hit or repeat.reused >= LENGTH - 1, repeat

    with monkeypatch.context() as patched:
        # A "flush" of the prompt itself leaves the cache as it was: what the gate would time without its flush.
        patched.setattr(coldness, "_flush_text", lambda tokenizer, ids: (tokenizer.decode(ids, skip_special_tokens=False), 0))
        with pytest.raises(WarmCacheError, match=rf"{LENGTH} of {LENGTH} prompt tokens from cache \(llama-cpp-python log"):
            served.generate(hay.token_ids, variant=F16, max_new_tokens=1, cold=True)

    timed = served.generate(hay.token_ids, variant=F16, max_new_tokens=24, cold=True, stop=lambda text: hay.answer in text)
    assert (timed.cold_check, timed.cold_detail) == ("engine", "llama-cpp-python log: prefix-match hit")
    assert hay.answer in timed.answer and timed.stopped_early  # an early stop too: the hit line comes before any token
    assert timed.kv_source == "engine" and timed.kv_bytes == round(90 * 2**20 / 4096 * timed.kv_tokens)


def test_the_shipped_llama_cpp_gate_runs_end_to_end(pytester):
    """gates/llama-cpp-kv.yaml through pytest: two launched engines (f16 and q8_0 KV), prompts token-exact on them,
    client-side TTFT and decode timings, the analytic KV estimate, and the decision as the exit status.
    One length instead of two, to keep CI short; everything else is the shipped file."""
    from pytest_longctx.gate.results import load_results

    gate = yaml.safe_load((Path(__file__).parents[2] / "gates" / "llama-cpp-kv.yaml").read_text())
    gate["sweep"]["lengths"] = [LENGTH]
    gate["report"] = "out/llama-cpp-kv.html"
    (pytester.path / "gate.yaml").write_text(yaml.safe_dump(gate, sort_keys=False))
    result = pytester.runpytest("--longctx-gate", "gate.yaml", "-p", "no:cacheprovider")
    results = load_results(pytester.path / "out" / "llama-cpp-kv.json")
    verdict = results.decision.verdict
    assert verdict in ("approve", "reject"), results.decision.reasons
    assert result.ret == (0 if verdict == "approve" else 1), result.stdout.str()
    result.assert_outcomes(passed=7)  # 3 cells x 2 sides, and the second timing pass

    cells = results.cells
    assert len(cells) == 6 and all(c.error is None for c in cells)
    assert all(c.tokens == LENGTH for c in cells)  # the engine counted every prompt's 512 tokens as we built them
    assert sum(c.found for c in cells if c.variant == "baseline") >= 2  # this model finds most needles at 512
    for c in cells:
        assert len(c.prefill_samples) == 2 and all(t > 0 for t in c.prefill_samples)  # TTFT of both timed runs
        assert c.decode_s_per_token is not None and c.decode_s_per_token > 0 and c.total_s > c.prefill_s
        assert c.kv_source == "engine"  # bytes per token of the cache the engine logged it allocated
        assert c.cold_check == "engine"  # every timed run verified cold by the engine's own log
    m = results.metrics
    assert m.kv_engine["baseline"]["bytes"] == 90 * 2**20 and m.kv_capacity_tokens == {"baseline": 4096, "candidate": 4096}
    assert m.memory_ratio == pytest.approx(m.kv_engine["candidate"]["bytes"] / m.kv_engine["baseline"]["bytes"])
    assert m.memory_ratio == pytest.approx((34 / 32) / 2, rel=1e-3)  # q8_0 blocks against f16, as the engine allocates them
    assert m.kv_capacity_ratio == pytest.approx(1 / m.memory_ratio)
    assert m.memory_label == "kv_bytes; engine-reported cache bytes per token"
    assert all(m.p95_prefill_s[s] > 0 and m.p95_decode_s[s] > 0 for s in ("baseline", "candidate"))
    servers = sorted((pytester.path / "out").glob("*.server.log"))
    assert len(servers) == 2 and "--type_k 8" in servers[1].read_text() + servers[0].read_text()

