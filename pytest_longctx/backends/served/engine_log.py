"""What a launched llama.cpp engine writes to its log: its KV cache's size, and how much of each prompt it evaluated."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

# llama.cpp (b6xxx, as bundled by llama-cpp-python 0.3.x) at context creation, one line per cache (two for
# interleaved sliding-window models):
# `llama_kv_cache: size =   90.00 MiB (  4096 cells,  30 layers,  1/1 seqs), K (f16):   45.00 MiB, V (f16):   45.00 MiB`
_KV_SIZE = re.compile(
    r"llama_kv_cache(?:_unified|_iswa)?: +size = +(?P<mib>[\d.]+) MiB \( *(?P<cells>\d+) cells, +(?P<layers>\d+) layers, "
    r"+(?P<used>\d+)/(?P<seqs>\d+) seqs\), K \((?P<k>\w+)\): +[\d.]+ MiB, V \((?P<v>\w+)\)"
)
_CONTEXT = "llama_context: constructing llama_context"
# llama-cpp-python's Llama.generate (verbose, the server's default) when it keeps part of the previous sequence:
_PREFIX_HIT = re.compile(r"Llama\.generate: (\d+) prefix-match hit, remaining (\d+) prompt tokens to eval")
_FULL_HIT = "Llama.generate: full prompt already cached, skipping reset"
# llama.cpp's per-request performance summary, printed once a verbose completion ends.
_PROMPT_EVAL = re.compile(r"prompt eval time = +[\d.]+ ms / +(\d+) tokens")


@dataclass(frozen=True)
class LoggedKvCache:
    """The KV cache a llama.cpp context allocated, as it logged it: `cells` token slots in `bytes` for `seqs` sequences."""

    bytes: int
    cells: int
    layers: int
    seqs: int
    k_type: str
    v_type: str


def kv_cache_from_log(text: str) -> LoggedKvCache | None:
    """The last context's KV cache from a llama.cpp log; a model with several caches (sliding-window layers apart)
    sums their bytes and layers and takes the full-attention cache's cells. None when the log has no such line."""
    start = text.rfind(_CONTEXT)
    lines = list(_KV_SIZE.finditer(text, max(start, 0)))
    if not lines:
        return None
    return LoggedKvCache(
        bytes=round(sum(float(m["mib"]) for m in lines) * 2**20),
        cells=max(int(m["cells"]) for m in lines),
        layers=sum(int(m["layers"]) for m in lines),
        seqs=max(int(m["seqs"]) for m in lines),
        k_type=lines[0]["k"],
        v_type=lines[0]["v"],
    )


@dataclass(frozen=True)
class LoggedPrefill:
    """One request as llama-cpp-python logged it: the prompt tokens it kept from the previous request, and the
    tokens its perf summary says it evaluated (None when that summary was not written)."""

    reused: int
    evaluated: int | None
    full_hit: bool = False


def prefill_from_log(segment: str) -> LoggedPrefill:
    """Read one request's log segment (from just before it was sent to just after it ended)."""
    hits = [int(m[1]) for m in _PREFIX_HIT.finditer(segment)]
    evaluated = [int(m[1]) for m in _PROMPT_EVAL.finditer(segment)]
    return LoggedPrefill(reused=max(hits, default=0), evaluated=evaluated[-1] if evaluated else None,
                         full_hit=_FULL_HIT in segment)


class LogCursor:
    """Reads what a server appended to its log since `mark()`: one request's segment when it runs alone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.logs_requests: bool | None = None  # whether the engine logs each request (unknown until a flush says)

    def mark(self) -> None:
        self._offset = self._size()

    def since_mark(self, *, wait_for: str, timeout_s: float) -> str:
        """The text appended since the mark, once it contains `wait_for` or `timeout_s` has passed."""
        deadline = time.monotonic() + timeout_s
        pause = 0.01
        while True:
            text = self._read()
            if wait_for in text or time.monotonic() > deadline:
                return text
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    def text(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def _read(self) -> str:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self._offset)
                return handle.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
