"""Where a served request runs: bounded slots over the replicas, and /metrics read beside a running stream."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from .metrics import EngineMetrics, scrape


class Replicas:
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


class MetricsReader:
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
