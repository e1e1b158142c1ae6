"""A model served over the OpenAI-compatible HTTP API (vLLM, llama.cpp): streamed greedy generation timed at the client."""

from __future__ import annotations

import functools
import itertools
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from ...capacity.kv_math import KvShape
from ...gate.spec import VariantSpec
from ..in_process import CellTimeout, Generation, decode_seconds
from .metrics import CACHE_DTYPE_BYTES, EngineMetrics, scrape
from .remote_tokenizer import RemoteTokenizer, chat_content
from .transport import ServedBackendError, connection, excerpt, parse_json, post, sse_events

Api = Literal["completions", "chat"]
PromptFormat = Literal["auto", "ids", "text"]
KvSource = Literal["engine", "analytic", "unknown"]

# Greedy decoding, spelled for every engine: llama.cpp's and llama-cpp-python's `repeat_penalty` and vLLM's
# `repetition_penalty` are both 1.0 (llama-cpp-python defaults to 1.1, which changes answers); each engine
# ignores the other's key.
# llama.cpp's `cache_prompt: false` makes each request prefill its whole prompt, as a gate's timings assume
# (vLLM needs --no-enable-prefix-caching at launch for the same; llama-cpp-python cannot turn its reuse off).
GREEDY: dict[str, Any] = {
    "temperature": 0.0, "top_p": 1.0, "top_k": 1, "seed": 0, "repeat_penalty": 1.0, "repetition_penalty": 1.0, "cache_prompt": False,
}


class PromptTokenMismatch(ServedBackendError):
    """The server counted a different number of prompt tokens than we sent: the prompt is not token-exact."""


@dataclass(frozen=True)
class ServedGeneration(Generation):
    """A Generation from a server, with where its figures came from.

    `kv_source` is "engine" when `kv_bytes` is the cache the engine's /metrics reported while this request
    held it (the prompt's KV at its first token; vLLM rounds up to whole blocks), "analytic" when it is
    `kv_bytes_analytic`, and "unknown" (kv_bytes 0) when neither is available.
    """

    kv_source: KvSource = "analytic"
    base_url: str = ""
    prompt_tokens: int = 0
    finish_reason: str | None = None
    stopped_early: bool = False  # the `stop` callback closed the stream


class ServedBackend:
    """The Backend protocol over one model served by one or more OpenAI-compatible replicas.

    Variants are not applied here: a served variant is a server started with its own flags (see
    server_launch), so a gate holds one ServedBackend per variant. `variant` only picks the bytes per
    KV element for the analytic estimate (`kv_bytes_per_element` overrides it).

    Prompts are sent token-exact as a list of ids in `prompt` on /v1/completions (llama.cpp, vLLM); a
    server that rejects that (4xx, or 500 from llama-cpp-python) is sent the decoded text instead, from
    then on (`prompt_format="auto"`). Text is exact only when the server tokenizes it back to the same ids,
    which a prompt built with its own tokenizer (RemoteTokenizer) guarantees. Either way the server's
    `usage.prompt_tokens` must equal our count, or PromptTokenMismatch is raised; a server whose stream
    carries no usage is asked once per prompt with a non-streamed one-token request.
    `api="chat"` sends the user message recovered from the ids through the tokenizer's chat template, so
    it only suits prompts built with that template.

    Timings are taken at the client from the stream's chunk arrival times: `prefill_s` is time to first
    token, `decode_s_per_token` the median gap between chunks when each carried one token (the mean from
    the first chunk to the last otherwise).
    With several requests in flight on one replica they measure the shared server, not one request.
    """

    def __init__(
        self,
        base_urls: Sequence[str],
        *,
        model: str | None = None,
        tokenizer: Any = None,
        kv_shape: KvShape | None = None,
        api: Api = "completions",
        max_concurrency: int = 1,
        timeout_s: float = 600.0,
        prompt_format: PromptFormat = "auto",
        kv_bytes_per_element: float | None = None,
        engine_metrics: bool = True,
        fingerprint: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        """
        Args:
            base_urls: replicas serving the same model, e.g. ["http://127.0.0.1:8000"] (no /v1 suffix).
            model: the `model` field of requests; None leaves it out (the server's only model).
            tokenizer: a local (transformers) tokenizer; None tokenizes through the first replica's
                tokenize endpoint (see RemoteTokenizer).
            kv_shape: the model's KV dimensions, for KV bytes; None leaves kv_bytes_analytic at 0.
            api: "completions" (token-exact) or "chat".
            max_concurrency: requests in flight per replica, at most.
            timeout_s: socket timeout for one read of a response.
            prompt_format: "ids", "text", or "auto" (ids, then text once a server rejects ids).
            kv_bytes_per_element: bytes per K/V element for the estimate and for llama.cpp's token count.
            engine_metrics: read /metrics while a request runs, for KV bytes the engine reports.
            fingerprint: names the weights in results; default "served:<model>".
            extra_body: more request fields (engine sampling options); they override the greedy ones.
        """
        if not base_urls:
            raise ValueError("ServedBackend needs at least one base URL")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.base_urls = tuple(u.rstrip("/") for u in base_urls)
        self.model = model
        self.api: Api = api
        self.timeout_s = timeout_s
        self.prompt_format: PromptFormat = prompt_format
        self.kv_bytes_per_element = kv_bytes_per_element
        self.engine_metrics = engine_metrics
        self.extra_body = dict(extra_body or {})
        self.tokenizer = tokenizer if tokenizer is not None else RemoteTokenizer(self.base_urls[0], model=model, timeout_s=timeout_s)
        self.fingerprint = fingerprint if fingerprint is not None else f"served:{model or 'default'}"
        self._kv_shape = kv_shape
        self._replicas = _Replicas(self.base_urls, max_concurrency)
        self._ids_rejected = prompt_format == "text"
        self._no_metrics: set[str] = set()  # replicas whose /metrics is absent: not asked again
        self._counted: dict[tuple[str, str, int], int] = {}  # prompt counts from servers whose streams carry no usage

    @property
    def kv_shape(self) -> KvShape:
        if self._kv_shape is None:
            raise ServedBackendError("this ServedBackend was given no kv_shape; pass kv_shape=KvShape(...) for the served model")
        return self._kv_shape

    @property
    def max_in_flight(self) -> int:
        return len(self.base_urls) * self._replicas.limit

    def generate(
        self,
        token_ids: Sequence[int],
        *,
        variant: VariantSpec,
        max_new_tokens: int,
        timeout_s: float | None = None,
        stop: Callable[[str], bool] | None = None,
    ) -> ServedGeneration:
        """Greedy-decode up to `max_new_tokens` on the least busy replica, waiting for a free slot first.

        Args:
            stop: called with the answer so far after each chunk; True closes the stream (early stop).
                The closed stream carries no usage: `new_tokens` counts the chunks received (one token
                each on llama.cpp and vLLM), and the prompt is counted by a separate request.
        Raises:
            CellTimeout: `timeout_s` passed (counted from when the request was sent).
            PromptTokenMismatch: the server's prompt token count differs from len(token_ids).
            ServedBackendError: an HTTP error, an error event, a stream without any token, or a server
                that reports no prompt token count at all.
        """
        with self._replicas.slot() as (url, in_flight):
            stream = functools.partial(self._stream, url, list(token_ids), variant=variant, max_new_tokens=max_new_tokens,
                                       timeout_s=timeout_s, stop=stop, alone=in_flight == 1)
            return self._in_accepted_format(url, stream)

    def generate_many(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        variant: VariantSpec,
        max_new_tokens: int,
        timeout_s: float | None = None,
        stop: Callable[[str], bool] | None = None,
    ) -> list[ServedGeneration]:
        """Run many prompts concurrently across the replicas (at most `max_concurrency` each); results in order.

        The first failure is raised once the requests already running have finished.
        """
        with ThreadPoolExecutor(max_workers=min(self.max_in_flight, max(1, len(prompts)))) as pool:
            futures = [
                pool.submit(self.generate, p, variant=variant, max_new_tokens=max_new_tokens, timeout_s=timeout_s, stop=stop)
                for p in prompts
            ]
            return [f.result() for f in futures]

    def _in_accepted_format(self, url: str, stream: Callable[[str], ServedGeneration]) -> ServedGeneration:
        """`stream(mode)` with the prompt as chat messages, token ids, or text: ids until the server rejects them."""
        if self.api == "chat":
            mode = "chat"
        else:
            mode = "text" if self._ids_rejected else "ids"
        try:
            return stream(mode)
        except _IdsRejected as rejected:
            if self.prompt_format != "auto":
                raise ServedBackendError(f"{url} rejected a prompt of token ids: {rejected}") from None
            try:
                generation = stream("text")
            except PromptTokenMismatch:
                self._ids_rejected = True  # text was taken, only counted differently: no need to offer ids again
                raise
            except ServedBackendError as exc:
                raise ServedBackendError(f"{exc} (as token ids it had answered {rejected})") from exc
            # The server wants text: send text from now on; the count check proves it tokenizes back exactly.
            self._ids_rejected = True
            return generation

    def _count_prompt(self, url: str, ids: list[int], mode: str) -> int:
        """The server's prompt token count from a non-streamed one-token request, for streams without usage
        (llama-cpp-python's, or one closed early). It runs after the timed stream, once per prompt and replica."""
        key = (url, mode, hash(tuple(ids)))
        if key in self._counted:
            return self._counted[key]
        path, body = self._body(ids, mode, 1)
        body["stream"] = False
        del body["stream_options"]
        parts = urllib.parse.urlsplit(url)
        conn = connection(parts, self.timeout_s)
        try:
            response = post(conn, parts.path.rstrip("/") + path, json.dumps(body).encode(), url, None)
            raw = response.read()
        finally:
            conn.close()
        try:
            counted = json.loads(raw)["usage"]["prompt_tokens"]
        except (ValueError, KeyError, TypeError):
            raise ServedBackendError(
                f"{url}{path} reports no usage.prompt_tokens (HTTP {response.status}: {excerpt(raw)}), so the prompt's "
                "token count cannot be checked; use a server that does (vLLM, llama.cpp's llama-server)"
            ) from None
        self._counted[key] = int(counted)
        return int(counted)

    def _body(self, ids: list[int], mode: str, max_new_tokens: int) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "max_tokens": max_new_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            **GREEDY,
            **self.extra_body,
        }
        if self.model is not None:
            body["model"] = self.model
        if mode == "chat":
            body["messages"] = [{"role": "user", "content": chat_content(self.tokenizer, ids)}]
            return "/v1/chat/completions", body
        body["prompt"] = ids if mode == "ids" else self.tokenizer.decode(ids, skip_special_tokens=False)
        return "/v1/completions", body

    def _stream(
        self,
        url: str,
        ids: list[int],
        mode: str,
        variant: VariantSpec,
        max_new_tokens: int,
        timeout_s: float | None,
        stop: Callable[[str], bool] | None,
        *,
        alone: bool,
    ) -> ServedGeneration:
        path, body = self._body(ids, mode, max_new_tokens)
        payload = json.dumps(body).encode()
        parts = urllib.parse.urlsplit(url)
        conn = connection(parts, self.timeout_s if timeout_s is None else min(self.timeout_s, timeout_s))
        pieces: list[str] = []
        usage: dict[str, Any] | None = None
        finish: str | None = None
        first = last = None
        arrivals: list[float] = []
        chunks = 0
        stopped = False
        metrics_reader: _MetricsReader | None = None
        try:
            start = time.perf_counter()
            deadline = None if timeout_s is None else start + timeout_s
            response = post(conn, parts.path.rstrip("/") + path, payload, url, timeout_s)
            # A server that does not take ids says so with 400 or 422, or with 500 (llama-cpp-python reports
            # its validation errors so). Retrying as text costs one request; the count check keeps it exact.
            if mode == "ids" and (400 <= response.status < 500 or response.status == 500):
                raise _IdsRejected(f"HTTP {response.status}: {excerpt(response.read())}")
            if response.status != 200:
                raise ServedBackendError(f"{url}{path} answered HTTP {response.status}: {excerpt(response.read())}")
            for arrived, data in sse_events(response, url, timeout_s):
                if data.strip() == "[DONE]":
                    break
                event = parse_json(data, url)
                if event.get("error"):
                    raise ServedBackendError(f"{url}{path} sent an error event: {excerpt(json.dumps(event['error']).encode())}")
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices") or ():
                    piece = choice.get("text") if mode != "chat" else (choice.get("delta") or {}).get("content")
                    finish = choice.get("finish_reason") or finish
                    if first is None:
                        first = arrived
                        if self.engine_metrics and alone and self._kv_shape is not None and url not in self._no_metrics:
                            metrics_reader = _MetricsReader(url)  # while this request holds its KV blocks
                    last = arrived
                    if piece:
                        pieces.append(piece)
                        arrivals.append(arrived)
                        chunks += 1
                if deadline is not None and arrived > deadline:
                    raise CellTimeout(f"cell exceeded cell_timeout_s={timeout_s:g} after {chunks} streamed chunks")
                if stop is not None and pieces and stop("".join(pieces)):
                    stopped = True
                    break
            end = time.perf_counter()
        finally:
            conn.close()  # on an early stop this is what tells the server to stop generating
        if first is None or last is None:
            raise ServedBackendError(f"{url}{path} streamed no token (finish_reason={finish!r}); see the server's log")
        prompt_tokens = len(ids)
        counted = usage.get("prompt_tokens") if usage is not None else None
        if counted is None:  # a stream without usage, or one we closed before it came
            counted = self._count_prompt(url, ids, mode)
        if counted is not None and int(counted) != prompt_tokens:
            sent = {"ids": "as token ids", "text": "as text (the server rejected token ids)", "chat": "as a chat message"}[mode]
            raise PromptTokenMismatch(
                f"{url} counted {counted} prompt tokens, but the prompt has {prompt_tokens} (sent {sent}): "
                "the server's tokenizer or chat template differs from ours, so lengths and depths would be off. "
                "Build the prompts with the server's tokenizer (RemoteTokenizer), or use api: completions with a server "
                "that takes token ids (llama.cpp's llama-server, vLLM)"
            )
        new_tokens = int(usage["completion_tokens"]) if usage is not None and usage.get("completion_tokens") is not None else chunks
        kv_tokens = prompt_tokens + max(new_tokens, 1) - 1  # the last token sampled is never fed back
        elem = self.kv_bytes_per_element
        if elem is None:
            elem = CACHE_DTYPE_BYTES.get(variant.cache_plan().kv_cache_dtype, 2.0)
        analytic = 0 if self._kv_shape is None else self._kv_shape.sequence_bytes(kv_tokens, elem)
        kv_bytes, source = (analytic, "analytic") if self._kv_shape is not None else (0, "unknown")
        if metrics_reader is not None:
            engine, read_at = metrics_reader.result()
            if engine is None:
                self._no_metrics.add(url)
            elif read_at <= end:  # read while the stream was open, so before the engine freed this request's cache
                # vLLM names its cache dtype; llama.cpp does not, so its token count takes ours.
                override = self.kv_bytes_per_element if self.kv_bytes_per_element is not None else (None if engine.cache_dtype else elem)
                measured = engine.kv_bytes_used(self.kv_shape, override)
                if measured is not None:
                    kv_bytes, source = measured, "engine"
        return ServedGeneration(
            answer="".join(pieces).strip(),
            new_tokens=new_tokens,
            prefill_s=first - start,
            decode_s_per_token=_decode_seconds(arrivals, first, last, new_tokens),
            total_s=end - start,
            kv_bytes=kv_bytes,
            kv_bytes_analytic=analytic,
            kv_tokens=kv_tokens,
            peak_bytes=None,  # the server's memory is not visible from here
            hit_limit=finish == "length",
            kv_source=source,  # type: ignore[arg-type]
            base_url=url,
            prompt_tokens=prompt_tokens,
            finish_reason=finish,
            stopped_early=stopped,
        )


def _decode_seconds(arrivals: Sequence[float], first: float, last: float, new_tokens: int) -> float | None:
    """Median inter-token latency when the stream sent a chunk per token (as the in-process backend measures);
    the mean over the stream otherwise, since a chunk of several tokens has no per-token gaps to take."""
    if new_tokens <= 1:
        return None
    if len(arrivals) == new_tokens:
        return decode_seconds([b - a for a, b in itertools.pairwise(arrivals)])
    return (last - first) / (new_tokens - 1)


class _IdsRejected(Exception):
    """The server answered a prompt given as token ids with a client error (or llama-cpp-python's 500)."""


class _Replicas:
    """Bounded slots per replica; each request takes the least busy one (then the least used, so load spreads)."""

    def __init__(self, urls: Sequence[str], limit: int) -> None:
        self.limit = limit
        self._busy = dict.fromkeys(urls, 0)
        self._served = dict.fromkeys(urls, 0)
        self._free = threading.Condition()

    @contextmanager
    def slot(self) -> Iterator[tuple[str, int]]:
        """Yield (base URL, requests now in flight on it, this one included)."""
        with self._free:
            self._free.wait_for(lambda: min(self._busy.values()) < self.limit)
            url = min(self._busy, key=lambda u: (self._busy[u], self._served[u]))
            self._busy[url] += 1
            self._served[url] += 1
            in_flight = self._busy[url]
        try:
            yield url, in_flight
        finally:
            with self._free:
                self._busy[url] -= 1
                self._free.notify()


class _MetricsReader:
    """Scrapes /metrics in a thread, so reading the stream (and its timings) does not wait for it."""

    def __init__(self, url: str) -> None:
        self._value: EngineMetrics | None = None
        self._read_at = float("inf")
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        try:
            self._value = scrape(url)
        except OSError:
            self._value = None
        self._read_at = time.perf_counter()

    def result(self) -> tuple[EngineMetrics | None, float]:
        """The metrics (None if the server has none) and when reading them finished (inf if it has not)."""
        self._thread.join(timeout=10.0)
        return self._value, self._read_at
