"""Driving a launched engine with concurrent streamed requests: the load sweep's client, bounded in count and time."""

from __future__ import annotations

import ipaddress
import json
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from ...gate import limits
from ...gate.load import RequestOutcome
from .client import GREEDY
from .transport import ServedBackendError, connection, excerpt, json_events, post, post_completion

PromptForm = Literal["ids", "text"]


class LoadRefused(ServedBackendError):
    """A load level that would leave the machine (a base URL off the loopback address) or exceed the load limits."""


def require_loopback(base_url: str) -> None:
    """Refuse any base URL whose host is not a loopback address: load goes only to an engine the gate launched here.

    Names are not resolved (a name could resolve anywhere, and differently later); `localhost` is the one name taken.
    """
    host = urllib.parse.urlsplit(base_url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise LoadRefused(f"the load sweep sends requests only to an engine on the loopback address; {base_url!r} is not one")


def prompt_form(base_url: str, ids: Sequence[int], decode: Callable[[list[int]], str], *, timeout_s: float,
                model: str | None = None) -> PromptForm:
    """Whether the engine takes a prompt as token ids ("ids") or needs its text; asked once, untimed, with a
    one-token request (llama-cpp-python's server takes text only; llama.cpp's and vLLM's take ids)."""
    status, _ = post_completion(base_url, _body(list(ids), "ids", 1, model, decode, stream=False), timeout_s)
    if status == 200:
        return "ids"
    status, raw = post_completion(base_url, _body(list(ids), "text", 1, model, decode, stream=False), timeout_s)
    if status != 200:
        raise ServedBackendError(f"{base_url}/v1/completions took the prompt neither as ids nor as text: HTTP {status}: {excerpt(raw)}")
    return "text"


def run_level(
    base_url: str,
    prompts: Sequence[Sequence[int]],
    *,
    concurrency: int,
    max_new_tokens: int,
    request_timeout_s: float,
    deadline: float,
    form: PromptForm = "ids",
    decode: Callable[[list[int]], str] | None = None,
    model: str | None = None,
) -> tuple[list[RequestOutcome], float]:
    """Send every prompt, at most `concurrency` in flight; return each request's outcome (in prompt order) and the
    level's wall time, from the first request sent to the last one finished.

    A request that fails is an outcome with its error, not an exception. Requests not yet sent when `deadline`
    (a time.perf_counter() value: the load sweep's budget) has passed are not sent: their outcome says so.
    Each request stops at `request_timeout_s` from when it was sent, or at `deadline`, whichever is first.

    Raises:
        LoadRefused: `base_url` is not on the loopback address, or the level exceeds the load limits.
    """
    require_loopback(base_url)
    if not 1 <= concurrency <= limits.MAX_LOAD_CONCURRENCY or len(prompts) > limits.MAX_LOAD_REQUESTS:
        raise LoadRefused(f"a load level of {len(prompts)} requests at concurrency {concurrency} exceeds the limits "
                          f"({limits.MAX_LOAD_REQUESTS} requests, concurrency {limits.MAX_LOAD_CONCURRENCY}; docs/limits.md)")
    if form == "text" and decode is None:
        raise ValueError("text prompts need `decode`")
    bodies = [_body(list(p), form, max_new_tokens, model, decode, stream=True) for p in prompts]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = list(pool.map(lambda body: _request(base_url, body, request_timeout_s, deadline), bodies))
    return outcomes, time.perf_counter() - started


def _body(ids: list[int], form: PromptForm, max_new_tokens: int, model: str | None, decode: Callable[[list[int]], str] | None,
          *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {**GREEDY, "max_tokens": max_new_tokens, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if model is not None:
        body["model"] = model
    body["prompt"] = ids if form == "ids" else decode(ids)  # type: ignore[misc]
    return body


def _request(base_url: str, body: dict[str, Any], timeout_s: float, deadline: float) -> RequestOutcome:
    sent = time.perf_counter()
    if sent >= deadline:
        return RequestOutcome(None, None, 0, "not sent: sweep.load.time_budget_s was spent before this request's turn")
    limit = min(timeout_s, deadline - sent)
    try:
        return _stream(base_url, body, sent, limit)
    except Exception as exc:  # noqa: BLE001 - any failure of one request is that request's outcome
        return RequestOutcome(None, None, 0, f"{type(exc).__name__}: {exc}")


def _stream(base_url: str, body: dict[str, Any], sent: float, limit: float) -> RequestOutcome:
    parts = urllib.parse.urlsplit(base_url)
    conn = connection(parts, limit)
    arrivals: list[float] = []
    usage: dict[str, Any] | None = None
    try:
        response = post(conn, parts.path.rstrip("/") + "/v1/completions", json.dumps(body).encode(), base_url, None)
        if response.status != 200:
            raise ServedBackendError(f"HTTP {response.status}: {excerpt(response.read())}")
        for arrived, event in json_events(response, base_url):
            usage = event.get("usage") or usage
            if any(choice.get("text") for choice in event.get("choices") or ()):
                arrivals.append(arrived)
            if arrived - sent > limit:  # a stream that trickles on past its time: each read alone never times out
                raise TimeoutError(f"the request ran past {limit:.3g} s")
    finally:
        conn.close()
    if not arrivals:
        raise ServedBackendError("the stream carried no token")
    # One token per chunk on llama.cpp, llama-cpp-python and vLLM; usage, where the engine sends it, counts exactly.
    tokens = int(usage["completion_tokens"]) if usage and usage.get("completion_tokens") is not None else len(arrivals)
    tpot = (arrivals[-1] - arrivals[0]) / (tokens - 1) if tokens > 1 else None
    return RequestOutcome(ttft_s=arrivals[0] - sent, tpot_s=tpot, output_tokens=tokens)
