"""Cold timed requests on a served engine: clearing its prefix cache first, and proving from its own counters that it did.

An engine with a prefix cache serves a repeated prompt (a timing pass) or a shared prefix (cells of one seed share
the haystack up to the needle, and every chat prompt its template) from cache, and then times a warm prefill. Each
timed request is made cold without touching the prompt's tokens:

- llama-cpp-python keeps one sequence and reuses its longest common prefix with the next prompt: a one-token,
  max_tokens=1 "flush" request whose token differs from the prompt's first replaces that sequence;
- llama.cpp's llama-server: `cache_prompt: false` on every request (see client.GREEDY);
- vLLM: a fresh `cache_salt` per timed request, so no cached block hashes match (or launch with
  --no-enable-prefix-caching).

Then the engine says how many prompt tokens it took from cache: `usage.prompt_tokens_details.cached_tokens`
(vLLM with --enable-prompt-tokens-details), `timings.cache_n` (llama-server), llama-cpp-python's
`Llama.generate: N prefix-match hit` log line (a launched server's log, with its perf summary as proof the
request was logged), or the growth of vLLM's `prefix_cache_hits` counter while the request ran alone.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

from .engine_log import LogCursor, prefill_from_log
from .metrics import EngineMetrics
from .transport import ServedBackendError, excerpt, post_completion

# How a cell's timings stand: "engine" (every timed request verified cold by the engine's counters), "assumed"
# (the side opted out with cold_timing: assume), "unverified" (the engine reports no counter), "n/a" (untimed,
# or an in-process model, whose timed runs never reuse a cache by construction).
ColdCheck = Literal["engine", "assumed", "unverified", "n/a"]
FLUSH_TEXTS = ("Z", "!", "0")
# llama-cpp-python's perf summary of a request that ran to its end (llama.cpp's library function; llama-server
# prints its own timings otherwise, so its log is not taken for llama-cpp-python's).
PERF_LINE = "llama_perf_context_print: prompt eval time"
FLUSH_LOG_WAIT_S = 2.0  # short texts of one token in common vocabularies; one whose token differs is used


class WarmCacheError(ServedBackendError):
    """A timed request the engine served partly from its prefix cache, twice: its timing would be a warm prefill."""


@dataclass(frozen=True)
class Coldness:
    """What the engine said about one request: `reused` prompt tokens came from its cache (None: it did not say)."""

    reused: int | None
    how: str  # which counter said it
    allowed: int = 0  # tokens every prompt shares with the flush (a BOS the engine adds to both)

    @property
    def cold(self) -> bool | None:
        return None if self.reused is None else self.reused <= self.allowed

    @property
    def check(self) -> ColdCheck:
        return "unverified" if self.reused is None else "engine"


def from_response(usage: dict[str, Any] | None, timings: dict[str, Any] | None, prompt_tokens: int) -> Coldness | None:
    """The cached-token count an engine put in its response, if it put one there."""
    details = (usage or {}).get("prompt_tokens_details") or {}
    if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
        return Coldness(details["cached_tokens"], "usage.prompt_tokens_details.cached_tokens")
    if isinstance(timings, dict):
        if isinstance(timings.get("cache_n"), int):
            return Coldness(timings["cache_n"], "timings.cache_n")
        if isinstance(timings.get("prompt_n"), int):
            return Coldness(max(prompt_tokens - timings["prompt_n"], 0), "timings.prompt_n")
    return None


def from_counter(before: EngineMetrics | None, after: EngineMetrics | None) -> Coldness | None:
    """vLLM's cumulative prefix-cache hits (tokens) across a request that ran alone on the engine."""
    if before is None or after is None or before.prefix_cache_hits is None or after.prefix_cache_hits is None:
        return None
    return Coldness(round(after.prefix_cache_hits - before.prefix_cache_hits), "vllm:prefix_cache_hits")


class ColdProbe:
    """One timed request's cold start and its verdict, on a server whose log (when launched here) we can read.

    llama-cpp-python prints its prefix-match line when a request starts, before its first token, and its perf
    summary only when a request runs to its end (not after an early stop). So the flush, which always runs to
    its end, proves the engine logs its requests; after that, a timed request whose log segment has no
    prefix-match line reused nothing.
    """

    def __init__(self, url: str, ids: list[int], *, tokenizer: Any, log: LogCursor | None, timeout_s: float,
                 model: str | None = None) -> None:
        self.url = url
        self.salt = uuid.uuid4().hex  # vLLM: a salt no earlier request used, so no cached block matches
        self.allowed = 0
        self._tokens = len(ids)
        self._log = log
        self._logged = False
        if log is not None and log.logs_requests is not False:
            text, self.allowed = _flush_text(tokenizer, ids)
            log.mark()
            try:
                _flush(url, text, timeout_s, model)
            except ServedBackendError:
                if log.logs_requests:  # it flushed before: a failure now is the server's, and the cell's
                    raise
                log.logs_requests = False  # no completions endpoint for it: the response and /metrics must say
                return
            # The perf summary is printed before the response is sent; the wait only covers a slow file system.
            self._logged = PERF_LINE in log.since_mark(wait_for=PERF_LINE, timeout_s=FLUSH_LOG_WAIT_S)
            if log.logs_requests is None:
                log.logs_requests = self._logged  # an engine that does not log so (vLLM) is not flushed again
            log.mark()  # the flush's own lines are behind the mark

    def verdict(self, answered: Coldness | None, counted: Coldness | None, *, alone: bool) -> Coldness:
        """The engine's word on the request just run: its response, else its log, else its counter."""
        if answered is not None:
            return answered
        if self._log is not None and self._logged and alone:
            logged = prefill_from_log(self._log.since_mark(wait_for="", timeout_s=0.0))
            if logged.full_hit:
                return Coldness(self._tokens, "llama-cpp-python log: full prompt already cached", self.allowed)
            return Coldness(logged.reused, "llama-cpp-python log: prefix-match hit", self.allowed)
        if counted is not None and alone:
            return counted
        return Coldness(None, "no prefix-cache counter: usage.prompt_tokens_details, timings, a launched server's log or /metrics")


def _flush_text(tokenizer: Any, ids: list[int]) -> tuple[str, int]:
    """A flush text and the tokens it must share with the prompt (a BOS both get), the fewest found."""
    best = (FLUSH_TEXTS[0], len(ids))
    for text in FLUSH_TEXTS:
        try:
            flush_ids = list(tokenizer.encode(text, add_special_tokens=True))
        except Exception:  # noqa: BLE001 - a tokenizer that cannot say: the verdict fails closed on any reuse
            return FLUSH_TEXTS[0], 0
        shared = next((i for i, (a, b) in enumerate(zip(flush_ids, ids, strict=False)) if a != b), min(len(flush_ids), len(ids)))
        if shared < best[1]:
            best = (text, shared)
    return best


def _flush(url: str, text: str, timeout_s: float, model: str | None) -> None:
    """A one-token request: llama-cpp-python replaces its one cached sequence with it, so the next prompt starts cold."""
    body: dict[str, Any] = {"prompt": text, "max_tokens": 1, "temperature": 0.0, "stream": False}
    if model is not None:
        body["model"] = model
    status, raw = post_completion(url, body, timeout_s)
    if status != 200:
        raise ServedBackendError(f"{url}/v1/completions answered the cache flush with HTTP {status}: {excerpt(raw)}")
