"""A model served over the OpenAI-compatible HTTP API (vLLM, llama.cpp): streamed greedy generation timed at the client."""

from __future__ import annotations

import itertools
import json
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ...capacity.kv_math import KvShape
from ...gate.spec import VariantSpec
from ..in_process import CellTimeout, Generation, decode_seconds
from .coldness import ColdCheck, Coldness, ColdProbe, WarmCacheError, from_counter, from_response
from .engine_log import LogCursor
from .metrics import CACHE_DTYPE_BYTES, EngineKv, EngineMetrics, kv_from_metrics, read_engine_kv, scrape
from .remote_tokenizer import RemoteTokenizer, chat_content
from .replicas import MetricsReader, Replicas
from .transport import ServedBackendError, connection, excerpt, json_events, post

Api = Literal["completions", "chat"]
PromptFormat = Literal["auto", "ids", "text"]
KvSource = Literal["engine", "analytic", "unknown"]
ColdTiming = Literal["verify", "assume"]

# Greedy decoding, spelled for every engine: llama.cpp's and llama-cpp-python's `repeat_penalty` and vLLM's
# `repetition_penalty` are both 1.0 (llama-cpp-python defaults to 1.1, which changes answers); each engine
# ignores the other's key.
# llama.cpp's `cache_prompt: false` makes each request prefill its whole prompt, as a gate's timings assume;
# vLLM and llama-cpp-python get their own means on timed requests (see coldness.py).
GREEDY: dict[str, Any] = {
    "temperature": 0.0, "top_p": 1.0, "top_k": 1, "seed": 0, "repeat_penalty": 1.0, "repetition_penalty": 1.0, "cache_prompt": False,
}


class PromptTokenMismatch(ServedBackendError):
    """The server counted a different number of prompt tokens than we sent: the prompt is not token-exact."""


@dataclass(frozen=True)
class ServedGeneration(Generation):
    """A Generation from a server, with where its figures came from.

    `kv_source` is "engine" when `kv_bytes` is the cache the engine's /metrics reported while this request
    held it (the prompt's KV at its first token; vLLM rounds up to whole blocks) or the request's tokens at the
    bytes per token of the cache the engine allocated, "analytic" when it is `kv_bytes_analytic`, and "unknown"
    (kv_bytes 0) when neither is available. `cold_check` says whether a timed request was verified cold (see
    coldness.py), and the `kv_capacity_*` fields are the engine's whole cache where it reports it.
    """

    kv_source: KvSource = "analytic"
    base_url: str = ""
    prompt_tokens: int = 0
    finish_reason: str | None = None
    stopped_early: bool = False  # the `stop` callback closed the stream
    cold_check: ColdCheck = "n/a"
    cold_detail: str = ""
    answered_cold: Coldness | None = None  # what the response itself said about the prompt cache
    kv_capacity_tokens: int | None = None
    kv_capacity_bytes: int | None = None
    kv_slots: int | None = None


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
    A request asked to be `cold` is started cold and verified so by the engine (coldness.py); one served from
    cache is run once more, and then raises WarmCacheError.
    """

    verifies_cold = True  # the sweep passes cold=True for timed requests

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
        server_log: Path | None = None,
        cold_timing: ColdTiming = "verify",
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
            server_log: the log of a server launched here (one replica): its KV cache figures, and for
                llama-cpp-python the prefix reuse of each cold request.
            cold_timing: "verify" cold requests with the engine's counters, or "assume" them cold unchecked.
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
        self._replicas = Replicas(self.base_urls, max_concurrency)
        self._ids_rejected = prompt_format == "text"
        self._no_metrics: set[str] = set()  # replicas whose /metrics is absent: not asked again
        self._counted: dict[tuple[str, str, int], int] = {}  # prompt counts from servers whose streams carry no usage
        self.cold_timing: ColdTiming = cold_timing
        self._log = None if server_log is None else LogCursor(server_log)
        self._engine_kv: dict[str, EngineKv | None] = {}

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
        cold: bool = False,
    ) -> ServedGeneration:
        """Greedy-decode up to `max_new_tokens` on the least busy replica, waiting for a free slot first.

        Args:
            stop: called with the answer so far after each chunk; True closes the stream (early stop).
                The closed stream carries no usage: `new_tokens` counts the chunks received (one token
                each on llama.cpp and vLLM), and the prompt is counted by a separate request.
            cold: a timed request: start it with no prompt tokens in the engine's cache, and verify that.
        Raises:
            CellTimeout: `timeout_s` passed (counted from when the request was sent).
            PromptTokenMismatch: the server's prompt token count differs from len(token_ids).
            WarmCacheError: a cold request the engine served from cache, and again when run once more.
            ServedBackendError: an HTTP error, an error event, a stream without any token, or a server
                that reports no prompt token count at all.
        """
        with self._replicas.slot() as (url, in_flight):
            ids, alone = list(token_ids), in_flight == 1
            kv = self.engine_kv(url)
            if not cold:
                return self._with_kv(self._generate_on(url, ids, variant, max_new_tokens, timeout_s, stop, alone=alone), kv)
            if self.cold_timing == "assume":
                gen = self._generate_on(url, ids, variant, max_new_tokens, timeout_s, stop, alone=alone)
                return self._with_kv(replace(gen, cold_check="assumed", cold_detail="cold_timing: assume"), kv)
            if self._log is not None and url == self.base_urls[0]:
                self._precount(url, ids)
            warm: list[str] = []
            for _ in range(2):  # one re-run: a hit the flush missed (another client's request between them, say)
                probe = ColdProbe(url, ids, tokenizer=self.tokenizer, log=self._log if url == self.base_urls[0] else None,
                                  timeout_s=self.timeout_s, model=self.model)
                before = self._counter(url, alone)
                gen = self._generate_on(url, ids, variant, max_new_tokens, timeout_s, stop, alone=alone, salt=probe.salt)
                verdict = probe.verdict(gen.answered_cold, from_counter(before, self._counter(url, alone)), alone=alone)
                if verdict.cold is not False:
                    return self._with_kv(replace(gen, cold_check=verdict.check, cold_detail=verdict.how), kv)
                warm.append(f"{verdict.reused} of {len(ids)} prompt tokens from cache ({verdict.how})")
            raise WarmCacheError(f"{url} served a timed prompt from its prefix cache, so its prefill would be timed warm: "
                                 f"{'; then '.join(warm)}. Check that nothing else sends requests to this server")

    def _precount(self, url: str, ids: list[int]) -> None:
        """Count a timed prompt before it runs, not after: a stream without usage (llama-cpp-python's) is counted
        by a request of the same prompt, which must not land in the timed request's log segment."""
        mode = "chat" if self.api == "chat" else "text" if self._ids_rejected else "ids"
        try:
            self._count_prompt(url, ids, mode)
        except ServedBackendError:
            pass  # a server that takes no ids here: the timed request finds out and counts it itself

    def engine_kv(self, url: str) -> EngineKv | None:
        """The KV cache the engine at `url` allocated, in its own figures (read once per replica): a launched
        llama.cpp's log line, llama-server's /props, or vLLM's cache_config_info metric."""
        if url not in self._engine_kv:
            log = self._log if url == self.base_urls[0] else None
            found = read_engine_kv(url, log.text() if log is not None else None, timeout_s=self.timeout_s)
            if found is None and self.engine_metrics:
                found = kv_from_metrics(self._counter(url, True))  # also marks a server without /metrics
            self._engine_kv[url] = found
        return self._engine_kv[url]

    def _with_kv(self, gen: ServedGeneration, kv: EngineKv | None) -> ServedGeneration:
        """The engine's cache figures on the generation; its bytes per token give the request's KV bytes where
        /metrics gave none (llama.cpp allocates the cache whole, so that is what the request's tokens occupy)."""
        if kv is None:
            return gen
        gen = replace(gen, kv_capacity_tokens=kv.capacity_tokens, kv_capacity_bytes=kv.bytes, kv_slots=kv.slots)
        per_token = kv.bytes_per_token
        if per_token is not None and gen.kv_source != "engine":
            gen = replace(gen, kv_bytes=round(per_token * gen.kv_tokens), kv_source="engine")
        return gen

    def _counter(self, url: str, alone: bool) -> EngineMetrics | None:
        if not (self.engine_metrics and alone) or url in self._no_metrics:
            return None
        try:
            found = scrape(url)
        except OSError:
            found = None
        if found is None:
            self._no_metrics.add(url)
        return found

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

    def _generate_on(
        self,
        url: str,
        ids: list[int],
        variant: VariantSpec,
        max_new_tokens: int,
        timeout_s: float | None,
        stop: Callable[[str], bool] | None,
        *,
        alone: bool,
        salt: str | None = None,
    ) -> ServedGeneration:
        if self.api == "chat":
            mode = "chat"
        else:
            mode = "text" if self._ids_rejected else "ids"
        try:
            return self._stream(url, ids, mode, variant, max_new_tokens, timeout_s, stop, alone=alone, salt=salt)
        except _IdsRejected as rejected:
            if self.prompt_format != "auto":
                raise ServedBackendError(f"{url} rejected a prompt of token ids: {rejected}") from None
            try:
                generation = self._stream(url, ids, "text", variant, max_new_tokens, timeout_s, stop, alone=alone, salt=salt)
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

    def _body(self, ids: list[int], mode: str, max_new_tokens: int, salt: str | None = None) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "max_tokens": max_new_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            **GREEDY,
            **self.extra_body,
        }
        if self.model is not None:
            body["model"] = self.model
        if salt is not None:
            body["cache_salt"] = salt  # vLLM >= 0.9 keys cached blocks by it; engines without it ignore the field
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
        salt: str | None = None,  # vLLM's cache_salt, on timed requests
        alone: bool,
    ) -> ServedGeneration:
        path, body = self._body(ids, mode, max_new_tokens, salt)
        payload = json.dumps(body).encode()
        parts = urllib.parse.urlsplit(url)
        conn = connection(parts, self.timeout_s if timeout_s is None else min(self.timeout_s, timeout_s))
        pieces: list[str] = []
        usage: dict[str, Any] | None = None
        timings: dict[str, Any] | None = None
        finish: str | None = None
        first = last = None
        arrivals: list[float] = []
        chunks = 0
        stopped = False
        metrics_reader: MetricsReader | None = None
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
            for arrived, event in json_events(response, url, timeout_s):
                if event.get("usage"):
                    usage = event["usage"]
                if event.get("timings"):  # llama-server: prompt_n, cache_n and its own timings
                    timings = event["timings"]
                for choice in event.get("choices") or ():
                    piece = choice.get("text") if mode != "chat" else (choice.get("delta") or {}).get("content")
                    finish = choice.get("finish_reason") or finish
                    if first is None:
                        first = arrived
                        if self.engine_metrics and alone and self._kv_shape is not None and url not in self._no_metrics:
                            metrics_reader = MetricsReader(url)  # while this request holds its KV blocks
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
            answered_cold=from_response(usage, timings, prompt_tokens),
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
