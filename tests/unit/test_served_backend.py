"""ServedBackend against a fake OpenAI-compatible server (a standard-library script) that streams SSE like an engine."""

from __future__ import annotations

import json
import textwrap
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest

from pytest_longctx.backends.in_process import CellTimeout
from pytest_longctx.backends.served.client import PromptTokenMismatch, ServedBackend
from pytest_longctx.backends.served.launch import LaunchSpec, launched
from pytest_longctx.backends.served.remote_tokenizer import RemoteTokenizer, chat_content
from pytest_longctx.backends.served.transport import ServedBackendError
from pytest_longctx.capacity.kv_math import KvShape
from pytest_longctx.gate.spec import VariantSpec

PREFILL_S_PER_TOKEN = 0.0005
DECODE_S = 0.004

# One token per character (id = code point), so a test can build exact prompts without a model. The answer
# is read from the prompt: "... code is X." makes the model say "The code is X.". The request's `model`
# picks a misbehaviour: text-only (rejects token ids), off-by-one (counts a BOS it added), no-usage, error.
FAKE_SERVER = textwrap.dedent(
    r'''
    import json, re, sys, threading, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    PREFILL, DECODE = float(sys.argv[2]), float(sys.argv[3])
    METRICS = "--no-metrics" not in sys.argv
    lock = threading.Lock()
    state = {"requests": 0, "in_flight": 0, "max_in_flight": 0, "kv_tokens": 0, "disconnects": 0, "metrics_reads": 0, "prompts": []}

    def answer_for(text):
        found = re.search(r"code is (\S+?)\.", text)
        return f"The code is {found.group(1)}." if found else "I do not know."

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # the body ends when the connection closes, as a stream may

        def log_message(self, *args):
            pass

        def reply(self, status, obj, content_type="application/json"):
            body = obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                self.reply(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self.reply(200, {"object": "list", "data": [{"id": "fake"}]})
            elif self.path == "/stats":
                with lock:
                    self.reply(200, state)
            elif self.path == "/reset-max":
                with lock:
                    state["max_in_flight"] = state["in_flight"]
                    self.reply(200, state)
            elif self.path == "/metrics":
                with lock:
                    state["metrics_reads"] += 1
                    text = f"llamacpp:kv_cache_tokens {state['kv_tokens']}\nllamacpp:requests_processing {state['in_flight']}\n"
                self.reply(200, text, "text/plain") if METRICS else self.reply(404, {"error": "not found"})
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            model = body.get("model", "fake")
            if self.path == "/tokenize":
                return self.reply(200, {"tokens": [ord(c) for c in body["content"]]})
            if self.path == "/detokenize":
                return self.reply(200, {"content": "".join(map(chr, body["tokens"]))})
            if model == "fake-error":
                return self.reply(500, {"error": {"message": "the engine fell over"}})
            if self.path == "/v1/chat/completions":
                chat = True
                ids = [ord(c) for c in "<user>" + body["messages"][0]["content"] + "</user><assistant>"]
            elif self.path == "/v1/completions":
                chat = False
                prompt = body["prompt"]
                if isinstance(prompt, list) and model == "fake-text-only":
                    return self.reply(422, {"detail": "prompt: Input should be a valid string"})
                ids = prompt if isinstance(prompt, list) else [ord(c) for c in prompt]
            else:
                return self.reply(404, {"error": "not found"})
            assert body["temperature"] == 0
            if not body["stream"]:  # a count check: one token, usage in the body
                with lock:
                    state["counts"] = state.get("counts", 0) + 1
                usage = None if model == "fake-never-usage" else {"prompt_tokens": len(ids), "completion_tokens": 1}
                return self.reply(200, {"choices": [{"text": answer_for("".join(map(chr, ids)))[:1]}], "usage": usage})
            assert body["stream_options"] == {"include_usage": True}
            with lock:
                state["requests"] += 1
                state["in_flight"] += 1
                state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
                state["kv_tokens"] += len(ids)
                state["prompts"].append("ids" if isinstance(body.get("prompt"), list) else "text")
            answer = answer_for("".join(map(chr, ids)))[: body["max_tokens"]]
            finish = "length" if len(answer) == body["max_tokens"] and not answer.endswith(".") else "stop"
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            sent = 0
            released = False
            try:
                time.sleep(PREFILL * len(ids))
                if chat:
                    self.event({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
                for i, char in enumerate(answer):
                    if i:
                        time.sleep(DECODE)
                    last = i == len(answer) - 1
                    piece = {"delta": {"content": char}} if chat else {"text": char}
                    self.event({"choices": [{"index": 0, **piece, "finish_reason": finish if last else None}]})
                    sent += 1
                    with lock:
                        state["kv_tokens"] += 1
                # Generation is over before the last bytes go out, as an engine frees a finished request: a
                # client that reads them and sends its next request must not find this one still counted.
                with lock:
                    state["in_flight"] -= 1
                    state["kv_tokens"] -= len(ids) + sent
                released = True
                if model not in ("fake-no-usage", "fake-never-usage"):
                    prompt_tokens = len(ids) + (model == "fake-off-by-one")
                    self.event({"choices": [], "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": sent}})
                self.wfile.write(b"data: [DONE]\n\n")
            except (BrokenPipeError, ConnectionResetError):
                with lock:
                    state["disconnects"] += 1
            finally:
                if not released:
                    with lock:
                        state["in_flight"] -= 1
                        state["kv_tokens"] -= len(ids) + sent

        def event(self, obj):
            self.wfile.write(b": keep-alive comment\n")
            self.wfile.write(("data: " + json.dumps(obj) + "\n\n").encode())
            self.wfile.flush()

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    '''
)

SHAPE = KvShape(layers=2, kv_heads=2, head_dim=8, attention_heads=4)
BASELINE = VariantSpec(name="baseline")
FP8 = VariantSpec.of("candidate", kv_cache_dtype="fp8")


class CharTokenizer:
    """The fake server's tokenizer: one token per character, with a tiny chat template."""

    chat_template = "<user>{content}</user><assistant>"

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": self.encode(text) if isinstance(text, str) else [self.encode(t) for t in text]}

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        return self.chat_template.format(content=messages[0]["content"])


TOKENIZER = CharTokenizer()


def prompt(code: str = "KESTREL-4827", filler: int = 200) -> list[int]:
    text = "log line\n" * (filler // 9) + f"The code is {code}.\nWhat is the code?"
    return TOKENIZER.encode(text)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two fake servers: `main` exports /metrics like llama.cpp, `plain` has none."""
    folder = tmp_path_factory.mktemp("fake-openai")
    script = folder / "fake_openai.py"
    script.write_text(FAKE_SERVER)
    with ExitStack() as stack:
        urls = {
            name: stack.enter_context(launched(
                LaunchSpec(f"{{python}} {script} {{port}} {PREFILL_S_PER_TOKEN} {DECODE_S} {extra}", ready_timeout_s=30),
                model="fake", log_path=folder / f"{name}.log",
            ))
            for name, extra in (("main", ""), ("plain", "--no-metrics"))
        }
        yield urls


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/stats", timeout=5) as response:
        return json.loads(response.read())


def quiet(url: str) -> dict:
    """Wait until no request runs on the fake (a test's abandoned stream ends at its next write), reset its peak."""
    deadline = time.monotonic() + 10
    while stats(url)["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    with urllib.request.urlopen(url + "/reset-max", timeout=5) as response:
        return json.loads(response.read())


def backend(url: str | list[str], **kwargs) -> ServedBackend:
    urls = [url] if isinstance(url, str) else url
    kwargs.setdefault("tokenizer", TOKENIZER)
    return ServedBackend(urls, **kwargs)


def test_a_streamed_answer_is_timed_and_counted(servers):
    ids = prompt(filler=400)
    gen = backend(servers["plain"], kv_shape=SHAPE).generate(ids, variant=BASELINE, max_new_tokens=64)
    assert gen.answer == "The code is KESTREL-4827."
    assert gen.new_tokens == len(gen.answer)
    assert gen.prompt_tokens == len(ids)
    assert gen.finish_reason == "stop" and not gen.hit_limit and not gen.stopped_early
    # The server sleeps before the first token and between tokens; the client sees at least that.
    assert gen.prefill_s >= PREFILL_S_PER_TOKEN * len(ids)
    assert DECODE_S * 0.5 <= gen.decode_s_per_token < DECODE_S + 0.25
    assert gen.total_s >= gen.prefill_s + (gen.new_tokens - 1) * gen.decode_s_per_token * 0.99
    assert gen.kv_tokens == len(ids) + gen.new_tokens - 1
    assert gen.kv_bytes_analytic == SHAPE.sequence_bytes(gen.kv_tokens, 2.0)
    assert (gen.kv_bytes, gen.kv_source) == (gen.kv_bytes_analytic, "analytic")  # that server has no /metrics
    assert gen.peak_bytes is None


def test_prompts_go_as_token_ids(servers):
    before = stats(servers["plain"])["prompts"]
    backend(servers["plain"]).generate(prompt(), variant=BASELINE, max_new_tokens=4)
    assert stats(servers["plain"])["prompts"][len(before):] == ["ids"]


def test_max_new_tokens_is_a_hit_limit(servers):
    gen = backend(servers["plain"]).generate(prompt(), variant=BASELINE, max_new_tokens=6)
    assert gen.answer == "The co"
    assert (gen.new_tokens, gen.hit_limit, gen.finish_reason) == (6, True, "length")


def test_the_variant_sets_the_analytic_element_size(servers):
    gen = backend(servers["plain"], kv_shape=SHAPE).generate(prompt(), variant=FP8, max_new_tokens=8)
    assert gen.kv_bytes_analytic == SHAPE.sequence_bytes(gen.kv_tokens, 1.0)
    q8 = backend(servers["plain"], kv_shape=SHAPE, kv_bytes_per_element=34 / 32).generate(prompt(), variant=FP8, max_new_tokens=8)
    assert q8.kv_bytes_analytic == SHAPE.sequence_bytes(q8.kv_tokens, 34 / 32)


def test_engine_metrics_give_the_kv_bytes_when_the_server_exports_them(servers):
    ids = prompt("KESTREL-" + "4" * 100, filler=300)  # a long answer keeps the stream open ~0.5 s for the scrape
    gen = backend(servers["main"], kv_shape=SHAPE).generate(ids, variant=BASELINE, max_new_tokens=128)
    assert gen.kv_source == "engine"
    # Read while the request held its cache: the prompt and the tokens generated by then.
    per_token = SHAPE.bytes_per_token(2.0)
    assert per_token * len(ids) <= gen.kv_bytes <= per_token * (len(ids) + gen.new_tokens)
    assert gen.kv_bytes_analytic == SHAPE.sequence_bytes(gen.kv_tokens, 2.0)


def test_a_server_without_metrics_is_not_asked_again(servers):
    url = servers["plain"]
    served = backend(url, kv_shape=SHAPE)
    reads = stats(url)["metrics_reads"]
    assert served.generate(prompt(), variant=BASELINE, max_new_tokens=4).kv_source == "analytic"
    assert stats(url)["metrics_reads"] == reads + 1
    assert served.generate(prompt(), variant=BASELINE, max_new_tokens=4).kv_source == "analytic"
    assert stats(url)["metrics_reads"] == reads + 1


def test_a_prompt_count_mismatch_is_an_error_not_a_skew(servers):
    ids = prompt()
    mismatch = rf"counted {len(ids) + 1} prompt tokens, but the prompt has {len(ids)} \(sent as token ids\)"
    with pytest.raises(PromptTokenMismatch, match=mismatch):
        backend(servers["plain"], model="fake-off-by-one").generate(ids, variant=BASELINE, max_new_tokens=4)


def test_a_server_that_rejects_ids_gets_text_and_is_still_checked(servers):
    served = backend(servers["plain"], model="fake-text-only")
    before = len(stats(servers["plain"])["prompts"])
    first = served.generate(prompt(), variant=BASELINE, max_new_tokens=32)
    second = served.generate(prompt("OSPREY-1111"), variant=BASELINE, max_new_tokens=32)
    assert (first.answer, second.answer) == ("The code is KESTREL-4827.", "The code is OSPREY-1111.")
    # The rejected attempt never reached the model; after it, every prompt goes as text straight away.
    assert stats(servers["plain"])["prompts"][before:] == ["text", "text"]
    with pytest.raises(ServedBackendError, match="rejected a prompt of token ids"):
        backend(servers["plain"], model="fake-text-only", prompt_format="ids").generate(prompt(), variant=BASELINE, max_new_tokens=4)


def test_without_usage_in_the_stream_one_unstreamed_request_counts_each_prompt(servers):
    url = servers["plain"]
    served = backend(url, model="fake-no-usage")
    before = stats(url).get("counts", 0)
    for _ in range(2):
        gen = served.generate(prompt(), variant=BASELINE, max_new_tokens=64)
        assert gen.answer == "The code is KESTREL-4827."
        assert gen.new_tokens == len(gen.answer)  # counted from the chunks
    served.generate(prompt("HERON-1"), variant=BASELINE, max_new_tokens=64)
    assert stats(url)["counts"] - before == 2  # once per distinct prompt


def test_a_server_that_never_reports_usage_is_an_error(servers):
    with pytest.raises(ServedBackendError, match="reports no usage.prompt_tokens"):
        backend(servers["plain"], model="fake-never-usage").generate(prompt(), variant=BASELINE, max_new_tokens=8)


def test_an_http_error_carries_the_servers_message(servers):
    with pytest.raises(ServedBackendError, match="HTTP 500.*the engine fell over"):
        backend(servers["plain"], model="fake-error").generate(prompt(), variant=BASELINE, max_new_tokens=8)


def test_early_stop_closes_the_stream(servers):
    url = servers["plain"]
    before = stats(url)["disconnects"]
    gen = backend(url).generate(prompt(), variant=BASELINE, max_new_tokens=64, stop=lambda text: "KESTREL" in text)
    assert gen.stopped_early and not gen.hit_limit
    assert gen.answer == "The code is KESTREL"
    assert gen.new_tokens == len("The code is KESTREL")
    assert gen.prompt_tokens == len(prompt())  # counted by a separate request, the stream's usage never came
    # The server noticed the closed connection (on its next write) instead of streaming on to a reader.
    deadline = time.monotonic() + 5
    while stats(url)["disconnects"] == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stats(url)["disconnects"] == before + 1


def test_a_cell_timeout_interrupts_the_stream(servers):
    with pytest.raises(CellTimeout, match="cell_timeout_s=0.05"):
        backend(servers["plain"]).generate(prompt(filler=400), variant=BASELINE, max_new_tokens=64, timeout_s=0.05)


def test_chat_sends_the_user_message_and_checks_the_templated_count(servers):
    ids = TOKENIZER.encode(TOKENIZER.apply_chat_template([{"role": "user", "content": "The code is HERON-2024.\nWhat is it?"}]))
    gen = backend(servers["plain"], api="chat").generate(ids, variant=BASELINE, max_new_tokens=64)
    assert gen.answer == "The code is HERON-2024."
    assert gen.prompt_tokens == len(ids)


def test_chat_refuses_ids_that_the_template_did_not_make():
    with pytest.raises(ServedBackendError, match="not one user message"):
        chat_content(TOKENIZER, TOKENIZER.encode("no template here"))


def test_many_prompts_spread_over_replicas_within_the_bound(servers, tmp_path):
    urls = [servers["main"], servers["plain"]]
    before = [quiet(u) for u in urls]
    codes = [f"CODE-{i}" for i in range(6)]
    served = backend(urls, max_concurrency=1)
    results = served.generate_many([prompt(c, filler=300) for c in codes], variant=BASELINE, max_new_tokens=64)
    assert [g.answer for g in results] == [f"The code is {c}." for c in codes]  # in the order given
    after = [stats(u) for u in urls]
    served_by = [a["requests"] - b["requests"] for a, b in zip(after, before, strict=True)]
    # The second request finds the first replica busy, so both are used; how the rest split follows timing.
    assert sum(served_by) == 6 and min(served_by) >= 1
    assert [a["max_in_flight"] for a in after] == [1, 1]  # never two at once on one replica
    assert {g.base_url for g in results} == set(urls)


def test_remote_tokenizer_round_trips_through_the_server(servers):
    remote = RemoteTokenizer(servers["plain"])
    assert remote.encode("code: Z9") == [ord(c) for c in "code: Z9"]
    assert remote.decode([72, 105]) == "Hi"
    assert remote(["ab", "c"])["input_ids"] == [[97, 98], [99]]
    # A local tokenizer of the same vocabulary lends its chat template and decodes; ids still come from the server.
    class Shouting(CharTokenizer):
        def decode(self, ids, skip_special_tokens=True):
            return super().decode(ids).upper()

    hybrid = RemoteTokenizer(servers["plain"], local=Shouting())
    assert hybrid.chat_template == TOKENIZER.chat_template
    assert hybrid.apply_chat_template([{"role": "user", "content": "x"}]) == "<user>x</user><assistant>"
    assert hybrid.decode([72, 105]) == "HI"
    with pytest.raises(ServedBackendError, match="no chat template"):
        remote.apply_chat_template([{"role": "user", "content": "x"}])
    # Without a local tokenizer the backend uses the server's.
    served = ServedBackend([servers["plain"]])
    assert isinstance(served.tokenizer, RemoteTokenizer)
    text_ids = served.tokenizer.encode("The code is WREN-7.\n")
    assert served.generate(text_ids, variant=BASELINE, max_new_tokens=32).answer == "The code is WREN-7."


def test_construction_rejects_what_cannot_work():
    with pytest.raises(ValueError, match="at least one base URL"):
        ServedBackend([], tokenizer=TOKENIZER)
    with pytest.raises(ValueError, match="max_concurrency"):
        ServedBackend(["http://127.0.0.1:1"], tokenizer=TOKENIZER, max_concurrency=0)
    with pytest.raises(ServedBackendError, match="no kv_shape"):
        ServedBackend(["http://127.0.0.1:1"], tokenizer=TOKENIZER).kv_shape  # noqa: B018


def test_an_unreachable_server_is_a_backend_error(tmp_path: Path):
    from pytest_longctx.backends.served.launch import free_port

    with pytest.raises(ServedBackendError, match="failed"):
        backend(f"http://127.0.0.1:{free_port()}").generate([1, 2, 3], variant=BASELINE, max_new_tokens=2)


def test_decode_is_the_median_gap_when_each_chunk_is_one_token():
    from pytest_longctx.backends.served.client import _decode_seconds

    arrivals = [1.0, 1.01, 1.02, 1.52, 1.53]  # one late chunk (a stalled client or server step)
    assert _decode_seconds(arrivals, 1.0, 1.53, new_tokens=5) == pytest.approx(0.01)
    # Chunks of several tokens have no per-token gaps: the mean over the stream is all there is.
    assert _decode_seconds([1.0, 1.4], 1.0, 1.4, new_tokens=5) == pytest.approx(0.1)
    assert _decode_seconds([1.0], 1.0, 1.0, new_tokens=1) is None

