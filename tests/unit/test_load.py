"""The load sweep's client and arithmetic against a fake engine: a threading HTTP server on 127.0.0.1 that streams SSE."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pytest_longctx.backends.served.load import LoadRefused, prompt_form, require_loopback, run_level
from pytest_longctx.gate import limits
from pytest_longctx.gate.load import LoadSpec, RequestOutcome, Slo, summarise
from pytest_longctx.gate.spec import VariantSpec


@dataclass
class Engine:
    """What the fake engine does and saw. `serial` takes one request at a time, as llama-cpp-python's global lock does."""

    first_token_s: float = 0.05
    gap_s: float = 0.01
    serial: bool = False
    text_only: bool = False  # rejects a prompt of token ids with HTTP 500, as llama-cpp-python does
    fail_prompts: frozenset[int] = frozenset()  # prompts (by their first id) answered with HTTP 503
    stall_s: float = 0.0  # sleep before the first token of every request
    in_flight: int = 0
    max_in_flight: int = 0
    prompts: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    queue: threading.Lock = field(default_factory=threading.Lock)


def _handler(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["prompt"]
            with engine.lock:
                engine.prompts.append(prompt)
            if engine.text_only and isinstance(prompt, list):
                self.send_response(500)
                self.end_headers()
                self.wfile.write(b'{"error": "prompt must be a string"}')
                return
            if isinstance(prompt, list) and prompt[0] in engine.fail_prompts:
                self.send_response(503)
                self.end_headers()
                self.wfile.write(b"busy")
                return
            if engine.serial:
                engine.queue.acquire()
            try:
                self._stream(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout): what the timeout test asks of it
            finally:
                if engine.serial:
                    engine.queue.release()

        def _stream(self, body: dict[str, Any]) -> None:
            with engine.lock:
                engine.in_flight += 1
                engine.max_in_flight = max(engine.max_in_flight, engine.in_flight)
            try:
                if not body.get("stream"):
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(json.dumps({"choices": [{"text": "x"}]}).encode())
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                time.sleep(engine.first_token_s + engine.stall_s)
                for i in range(body["max_tokens"]):
                    if i:
                        time.sleep(engine.gap_s)
                    self.wfile.write(f"data: {json.dumps({'choices': [{'text': f' t{i}'}]})}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
            finally:
                with engine.lock:
                    engine.in_flight -= 1

    return Handler


@pytest.fixture
def serve() -> Iterator[Any]:
    servers = []

    def start(engine: Engine) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(engine))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


PROMPTS = [[i, 100 + i, 200 + i] for i in range(8)]
NEVER = float("inf")  # a deadline no test reaches


def test_a_level_keeps_exactly_its_concurrency_in_flight_and_times_each_request(serve):
    engine = Engine(first_token_s=0.1, gap_s=0.02)
    outcomes, wall = run_level(serve(engine), PROMPTS, concurrency=4, max_new_tokens=5, request_timeout_s=30, deadline=NEVER)
    assert engine.max_in_flight == 4
    assert sorted(map(tuple, engine.prompts)) == sorted(map(tuple, PROMPTS))  # each prompt sent once
    assert all(o.error is None and o.output_tokens == 5 for o in outcomes)
    assert all(o.ttft_s is not None and o.ttft_s >= 0.1 for o in outcomes)
    assert all(o.tpot_s is not None and o.tpot_s >= 0.02 for o in outcomes)
    assert wall >= 2 * (0.1 + 4 * 0.02)  # two waves of four


def test_a_serial_engine_makes_ttft_grow_with_the_queue(serve):
    """llama-cpp-python's server: one request at a time, so the k-th request of a level waits for k-1 others."""
    engine = Engine(first_token_s=0.1, gap_s=0.01, serial=True)
    url = serve(engine)
    alone, _ = run_level(url, PROMPTS[:4], concurrency=1, max_new_tokens=2, request_timeout_s=30, deadline=NEVER)
    queued, _ = run_level(url, PROMPTS[:4], concurrency=4, max_new_tokens=2, request_timeout_s=30, deadline=NEVER)
    assert engine.max_in_flight == 1
    assert max(o.ttft_s for o in queued) >= 3 * 0.1  # the last of four waited for three others
    slo = Slo(ttft_s=0.25, tpot_s=1.0)
    assert summarise("b", 1, alone, 1.0, slo).good == 4
    assert summarise("b", 4, queued, 1.0, slo).good < 4


def test_the_arithmetic_of_a_level():
    slo = Slo(ttft_s=1.0, tpot_s=0.1)
    outcomes = [
        RequestOutcome(0.5, 0.05, 10),  # within both
        RequestOutcome(2.0, 0.05, 10),  # TTFT over
        RequestOutcome(0.5, 0.2, 10),  # TPOT over
        RequestOutcome(0.2, None, 1),  # one token: no TPOT, judged on TTFT
        RequestOutcome(None, None, 0, "HTTP 503: busy"),
    ]
    level = summarise("cand", 4, outcomes, 2.0, slo)
    assert (level.requests, level.completed, level.errors, level.good) == (5, 4, 1, 2)
    assert level.output_tokens == 31 and level.throughput_tok_s == pytest.approx(15.5)
    assert level.goodput_rps == pytest.approx(1.0)
    assert level.ttft_p50_s == pytest.approx(0.5) and level.ttft_p95_s == pytest.approx(1.775)  # numpy's linear percentile
    assert level.tpot_p50_s == pytest.approx(0.05) and level.tpot_p95_s == pytest.approx(0.185)
    assert level.error_samples == ("HTTP 503: busy",)
    assert not slo.met(outcomes[4])


def test_an_engine_error_is_that_requests_outcome_not_the_levels(serve):
    engine = Engine(fail_prompts=frozenset({2, 5}))
    outcomes, _ = run_level(serve(engine), PROMPTS, concurrency=3, max_new_tokens=2, request_timeout_s=30, deadline=NEVER)
    assert [o.error is not None for o in outcomes] == [i in (2, 5) for i in range(8)]
    assert "HTTP 503" in (outcomes[2].error or "")


def test_requests_past_the_time_budget_are_not_sent(serve):
    engine = Engine(first_token_s=0.2, serial=True)
    outcomes, _ = run_level(serve(engine), PROMPTS[:6], concurrency=1, max_new_tokens=2, request_timeout_s=30,
                            deadline=time.perf_counter() + 0.3)
    unsent = [o for o in outcomes if o.error is not None and o.error.startswith("not sent")]
    assert unsent and outcomes[0].error is None
    assert len(engine.prompts) == 6 - len(unsent)  # the engine never saw them


def test_a_request_stops_at_its_timeout(serve):
    engine = Engine(first_token_s=0.05, stall_s=2.0)
    started = time.perf_counter()
    outcomes, _ = run_level(serve(engine), PROMPTS[:2], concurrency=2, max_new_tokens=2, request_timeout_s=0.3, deadline=NEVER)
    assert all(o.error is not None for o in outcomes)
    assert time.perf_counter() - started < 1.5


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "http://example.com:8000", "http://0.0.0.0:8000", "http://192.168.1.2"])
def test_load_goes_only_to_the_loopback_address(url):
    with pytest.raises(LoadRefused, match="loopback"):
        run_level(url, PROMPTS, concurrency=2, max_new_tokens=2, request_timeout_s=1, deadline=NEVER)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://127.0.0.2:9", "http://localhost:8000", "http://[::1]:8000"])
def test_loopback_addresses_are_taken(url):
    require_loopback(url)


def test_a_level_past_the_limits_is_refused_before_anything_is_sent(serve):
    engine = Engine()
    url = serve(engine)
    with pytest.raises(LoadRefused, match="limits"):
        run_level(url, PROMPTS, concurrency=limits.MAX_LOAD_CONCURRENCY + 1, max_new_tokens=2, request_timeout_s=1, deadline=NEVER)
    with pytest.raises(LoadRefused, match="limits"):
        run_level(url, [[1]] * (limits.MAX_LOAD_REQUESTS + 1), concurrency=1, max_new_tokens=2, request_timeout_s=1, deadline=NEVER)
    assert engine.prompts == []


def test_an_engine_that_takes_only_text_gets_the_decoded_prompts(serve):
    engine = Engine(text_only=True)
    url = serve(engine)

    def decode(ids: list[int]) -> str:
        return " ".join(map(str, ids))

    form = prompt_form(url, PROMPTS[0], decode, timeout_s=5)
    assert form == "text"
    outcomes, _ = run_level(url, PROMPTS[:3], concurrency=2, max_new_tokens=2, request_timeout_s=5, deadline=time.perf_counter() + NEVER,
                            form=form, decode=decode)
    assert all(o.error is None for o in outcomes)
    assert sorted(p for p in engine.prompts if isinstance(p, str))[-3:] == ["0 100 200", "1 101 201", "2 102 202"]


def test_levels_run_in_abba_order_across_the_sides():
    base, cand = VariantSpec(name="baseline"), VariantSpec(name="candidate")
    spec = LoadSpec(concurrency=(1, 4, 8, 16), requests=16, length=256, slo=Slo(1.0, 0.1))
    order = [(side.name, level) for side, level in spec.order((base, cand))]
    assert order == [("baseline", 1), ("candidate", 1), ("candidate", 4), ("baseline", 4),
                     ("baseline", 8), ("candidate", 8), ("candidate", 16), ("baseline", 16)]
