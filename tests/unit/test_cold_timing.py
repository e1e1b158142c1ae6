"""Timed requests on a served engine with a prefix cache: made cold, verified by the engine's own counters, and a
warm one never timed as cold (fake engines that cache prompts as llama-cpp-python and vLLM do)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_longctx.backends.served.client import ServedBackend
from pytest_longctx.backends.served.coldness import WarmCacheError
from pytest_longctx.backends.served.launch import LaunchSpec, launched
from pytest_longctx.gate.results import CellResult, TimingSample
from pytest_longctx.gate.spec import VariantSpec
from pytest_longctx.gate.sweep import Cell, merge_samples, timed_run
from pytest_longctx.tasks import TaskPrompt

# One token per character. `llamacpp`: one cached sequence, its longest common prefix with the next prompt reused
# and logged as llama-cpp-python logs it (with the KV size line llama.cpp prints at start); `sticky` keeps every
# prompt (a flush cannot clear it); `vllm`: every prompt cached under its cache_salt, the hit reported in
# usage.prompt_tokens_details.cached_tokens; `silent`: caches like `sticky` and says nothing.
FAKE_ENGINE = textwrap.dedent(
    r'''
    import json, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer

    STYLE = sys.argv[2]
    sequences = []

    def log(line):
        print(line, file=sys.stderr, flush=True)

    log("llama_context: constructing llama_context")
    log("llama_kv_cache: size =   90.00 MiB (  4096 cells,  30 layers,  1/1 seqs), K (f16):   45.00 MiB, V (f16):   45.00 MiB")

    def common(a, b):
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        return n

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["prompt"]
            ids = prompt if isinstance(prompt, list) else [ord(c) for c in prompt]
            key = [body.get("cache_salt")] if STYLE == "vllm" else []
            reused = max((common(s, key + ids) for s in sequences), default=0)
            reused = max(reused - len(key), 0)
            if STYLE == "llamacpp":
                sequences[:] = [ids]
            else:
                sequences.append(key + ids)
            if STYLE in ("llamacpp", "sticky"):
                if reused:
                    log(f"Llama.generate: {reused} prefix-match hit, remaining {len(ids) - reused} prompt tokens to eval")
                log(f"llama_perf_context_print: prompt eval time =  1.00 ms / {len(ids) - reused} tokens")
            usage = {"prompt_tokens": len(ids), "completion_tokens": 1}
            if STYLE == "vllm":
                usage["prompt_tokens_details"] = {"cached_tokens": reused}
            if not body.get("stream"):
                return self.send(200, {"choices": [{"text": "x"}], "usage": usage})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for event in ({"choices": [{"text": "42", "finish_reason": "stop"}]}, {"choices": [], "usage": usage}):
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")

        def send(self, status, obj):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps(obj).encode())

    HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    '''
)
PROMPT = [ord(c) for c in "The haystack, then the needle: the code is 42. What is the code?"]
VARIANT = VariantSpec(name="baseline")


class CharTokenizer:
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(map(chr, ids))


@pytest.fixture
def engine(tmp_path: Path):
    """Start a fake engine of the given style; yield a ServedBackend on it that reads its log."""
    script = tmp_path / "engine.py"
    script.write_text(FAKE_ENGINE)
    started = []

    def start(style: str, **kwargs) -> ServedBackend:
        log = tmp_path / f"{style}.log"
        spec = LaunchSpec(f"{{python}} {script} {{port}} {style}", ready_timeout_s=30)
        context = launched(spec, model="fake", log_path=log)
        url = context.__enter__()
        started.append(context)
        return ServedBackend([url], tokenizer=CharTokenizer(), engine_metrics=False, prompt_format="ids",
                             server_log=log if style != "vllm" else None, **kwargs)

    yield start
    for context in started:
        context.__exit__(None, None, None)


def test_a_repeated_prompt_hits_the_cache_unless_flushed_and_timed_requests_are_verified_cold(engine) -> None:
    served = engine("llamacpp")
    served.generate(PROMPT, variant=VARIANT, max_new_tokens=4)
    assert "prefix-match hit" not in served._log.text()  # type: ignore[union-attr]
    served.generate(PROMPT, variant=VARIANT, max_new_tokens=4)  # an untimed repeat: served from cache
    assert f"{len(PROMPT)} prefix-match hit" in served._log.text()  # type: ignore[union-attr]

    timed = served.generate(PROMPT, variant=VARIANT, max_new_tokens=4, cold=True)

    assert (timed.cold_check, timed.cold_detail) == ("engine", "llama-cpp-python log: prefix-match hit")
    # The prompt is counted first (a hit, untimed), then the one-token flush, then the timed request: all of it evaluated.
    tail = served._log.text().split("prompt eval time =  1.00 ms / 1 tokens\n")[-1]  # type: ignore[union-attr]
    assert tail == f"llama_perf_context_print: prompt eval time =  1.00 ms / {len(PROMPT)} tokens\n"


def test_a_warm_timed_request_is_rerun_once_then_refused_not_timed(engine) -> None:
    served = engine("sticky")
    served.generate(PROMPT, variant=VARIANT, max_new_tokens=4)

    with pytest.raises(WarmCacheError, match=rf"{len(PROMPT)} of {len(PROMPT)} prompt tokens from cache .*; then {len(PROMPT)} of"):
        served.generate(PROMPT, variant=VARIANT, max_new_tokens=4, cold=True)
    prompt = TaskPrompt.__new__(TaskPrompt)  # timed_run reads only the ids and the stop rule
    object.__setattr__(prompt, "token_ids", PROMPT)
    object.__setattr__(prompt, "answer_complete", lambda text: False)
    sample = timed_run(served, VARIANT, Cell("niah", 64, 0.5, 1), prompt, max_new_tokens=4)
    assert sample.prefill_s is None and "WarmCacheError" in (sample.error or "")


def test_vllm_style_salted_requests_are_verified_by_cached_tokens(engine) -> None:
    served = engine("vllm")
    served.generate(PROMPT, variant=VARIANT, max_new_tokens=4)

    timed = served.generate(PROMPT, variant=VARIANT, max_new_tokens=4, cold=True)

    assert (timed.cold_check, timed.cold_detail) == ("engine", "usage.prompt_tokens_details.cached_tokens")


def test_an_engine_without_counters_is_unverified_unless_the_side_assumes(engine) -> None:
    served = engine("silent")
    assert served.generate(PROMPT, variant=VARIANT, max_new_tokens=4, cold=True).cold_check == "unverified"
    assumed = engine("silent", cold_timing="assume")
    assert assumed.generate(PROMPT, variant=VARIANT, max_new_tokens=4, cold=True).cold_check == "assumed"


def test_the_engines_kv_size_gives_each_request_its_bytes(engine) -> None:
    gen = engine("llamacpp").generate(PROMPT, variant=VARIANT, max_new_tokens=4)

    assert (gen.kv_capacity_tokens, gen.kv_capacity_bytes, gen.kv_slots) == (4096, 90 * 2**20, 1)
    assert gen.kv_source == "engine" and gen.kv_bytes == round(90 * 2**20 / 4096 * gen.kv_tokens)


def test_one_unverified_timed_run_makes_the_cells_timings_unverified() -> None:
    cell = CellResult("baseline", "niah", 64, 64, 0.5, 1, True, "42", "42", 0.1, 0.01, 0.2, 2, None, None, None, None, "x",
                      prefill_samples=(0.1,), total_samples=(0.2,), decode_samples=(0.01,), cold_check="engine")
    sample = TimingSample("baseline", "niah", 64, 0.5, 1, 0.1, 0.01, 0.2, "42", cold_check="unverified")

    merged = merge_samples(cell, [sample], repeats=2)

    assert merged.error is None and merged.cold_check == "unverified"
