"""The load sweep (`sweep.load`): its spec, what one side measured at one concurrency level, and that level's arithmetic."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from . import limits
from .reader import Reader as _Reader

if TYPE_CHECKING:
    from .thresholds import Thresholds

Side = TypeVar("Side")

LOAD_KEYS = ("concurrency", "requests", "length", "slo", "max_new_tokens", "request_timeout_s", "time_budget_s")
MAX_ERROR_SAMPLES = 3  # distinct error messages kept per level: enough to say what went wrong, bounded


@dataclass(frozen=True)
class Slo:
    """What a request must meet to count towards goodput: its time to first token and its time per output token."""

    ttft_s: float
    tpot_s: float

    def met(self, outcome: RequestOutcome) -> bool:
        """A finished request within both; one with a single output token has no time per token and is judged on TTFT."""
        return (outcome.error is None and outcome.ttft_s is not None and outcome.ttft_s <= self.ttft_s
                and (outcome.tpot_s is None or outcome.tpot_s <= self.tpot_s))


@dataclass(frozen=True)
class LoadSpec:
    """At each concurrency level both sides get the same `requests` prompts of `length` tokens, at most
    `concurrency` in flight; `time_budget_s` bounds the whole load sweep (both sides, every level)."""

    concurrency: tuple[int, ...]
    requests: int
    length: int
    slo: Slo
    max_new_tokens: int = 32
    request_timeout_s: float = 300.0
    time_budget_s: float = 1800.0

    def order(self, sides: Sequence[Side]) -> list[tuple[Side, int]]:
        """(side, level) in run order: ABBA across levels, so a drift in the machine's speed hits both sides."""
        run: list[tuple[Side, int]] = []
        for i, level in enumerate(self.concurrency):
            run.extend((side, level) for side in (sides if i % 2 == 0 else sides[::-1]))
        return run

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> LoadSpec:
        values = dict(record)
        values["concurrency"] = tuple(values["concurrency"])
        values["slo"] = Slo(**values["slo"])
        return cls(**values)


def parse_load(r: _Reader, raw: Any) -> LoadSpec | None:
    if raw is None:
        return None
    m = r.mapping(raw, "sweep.load", {k: "" for k in LOAD_KEYS})
    for key in ("concurrency", "requests", "length", "slo"):
        if key not in m:
            raise r.fail(f"sweep.load.{key}", "is missing",
                         "write sweep.load: {concurrency: [1, 4, 8], requests: 16, length: 1024, slo: {ttft_s: 2.0, tpot_s: 0.1}}")
    levels = tuple(r.integer(x, "sweep.load.concurrency", low=1, high=limits.MAX_LOAD_CONCURRENCY)
                   for x in r.listing(m["concurrency"], "sweep.load.concurrency", most=limits.MAX_LOAD_LEVELS))
    if list(levels) != sorted(levels):
        raise r.fail("sweep.load.concurrency", f"{list(levels)} is not in increasing order",
                     f"list the levels from lowest to highest: {sorted(levels)}")
    requests = r.integer(m["requests"], "sweep.load.requests", low=1, high=limits.MAX_LOAD_REQUESTS)
    if requests < levels[-1]:
        raise r.fail("sweep.load.requests", f"{requests} requests never put {levels[-1]} in flight at once",
                     f"send at least as many requests as the highest concurrency ({levels[-1]})")
    if requests * len(levels) > limits.MAX_LOAD_TOTAL_REQUESTS:
        raise r.fail("sweep.load", f"plans {requests * len(levels):,} requests per side (requests x levels)",
                     f"send at most {limits.MAX_LOAD_TOTAL_REQUESTS:,} per side: fewer requests or fewer levels")
    slo = r.mapping(m["slo"], "sweep.load.slo", {"ttft_s": "", "tpot_s": ""})
    for key in ("ttft_s", "tpot_s"):
        if key not in slo:
            raise r.fail(f"sweep.load.slo.{key}", "is missing",
                         "give both SLOs, e.g. slo: {ttft_s: 2.0, tpot_s: 0.1} (seconds to first token, seconds per output token)")
    return LoadSpec(
        concurrency=levels,
        requests=requests,
        length=r.integer(m["length"], "sweep.load.length", low=64, high=limits.MAX_LENGTH_TOKENS),
        slo=Slo(r.number(slo["ttft_s"], "sweep.load.slo.ttft_s", low=0.001, high=limits.MAX_LOAD_REQUEST_TIMEOUT_S),
                r.number(slo["tpot_s"], "sweep.load.slo.tpot_s", low=0.0001, high=limits.MAX_LOAD_REQUEST_TIMEOUT_S)),
        # Two tokens at least: time per output token needs a gap between two of them.
        max_new_tokens=r.integer(m.get("max_new_tokens", 32), "sweep.load.max_new_tokens", low=2, high=limits.MAX_NEW_TOKENS),
        request_timeout_s=r.number(m.get("request_timeout_s", 300.0), "sweep.load.request_timeout_s",
                                   low=0.001, high=limits.MAX_LOAD_REQUEST_TIMEOUT_S),
        time_budget_s=r.number(m.get("time_budget_s", 1800.0), "sweep.load.time_budget_s", low=0.001, high=limits.MAX_LOAD_TIME_BUDGET_S),
    )


class _Variant(Protocol):
    """What the load sweep reads of a side (gate.spec.VariantSpec; named structurally, since spec imports this module)."""

    @property
    def name(self) -> str: ...

    @property
    def served(self) -> Any: ...


def check_load(r: _Reader, variants: Sequence[_Variant], load: LoadSpec | None, thresholds: Thresholds) -> None:
    """The load sweep drives only engines the gate launches itself, on the loopback address; its thresholds need it."""
    for name in ("goodput_ratio", "throughput_ratio"):
        if getattr(thresholds, f"{name}_min") is not None and load is None:
            raise r.fail(f"thresholds.{name}", "needs a load sweep to compare",
                         "add sweep.load: {concurrency: [1, 4], requests: 8, length: 512, slo: {ttft_s: 2.0, tpot_s: 0.1}}")
    if load is None:
        return
    for side in variants:
        engine = side.served
        if engine is not None and engine.launch is None:
            raise r.fail("sweep.load", f"would send load to {engine.base_urls[0]}, a server side {side.name} does not launch",
                         f"give {side.name} launch: {{command: ...}}: the load sweep only drives an engine the gate starts on 127.0.0.1")


def applies(variants: Sequence[_Variant]) -> str | None:
    """None when the load sweep runs on these sides, else why it does not (said in the decision and the report)."""
    in_process = [side.name for side in variants if side.served is None]
    if not in_process:
        return None
    return (f"sweep.load does not apply: {' and '.join(in_process)} run{'s' if len(in_process) == 1 else ''} in-process, one "
            "request at a time without batching, so concurrent requests would only queue in pytest-longctx itself; the load "
            "sweep measures served engines (backend: openai with launch:)")


@dataclass(frozen=True)
class RequestOutcome:
    """One request of a load level: time to first token, time per output token after it, tokens received, or why it failed."""

    ttft_s: float | None
    tpot_s: float | None
    output_tokens: int
    error: str | None = None


@dataclass(frozen=True)
class LoadLevel:
    """What one side did at one concurrency level: throughput and goodput over the level's wall time, the
    p50 and p95 of TTFT and time per output token over its requests that finished, and its errors."""

    variant: str
    concurrency: int
    requests: int
    completed: int
    errors: int
    good: int  # completed requests that met both SLOs
    output_tokens: int
    wall_s: float
    throughput_tok_s: float | None  # output tokens per second of the level's wall
    goodput_rps: float | None  # requests per second that met both SLOs
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    tpot_p50_s: float | None
    tpot_p95_s: float | None
    error_samples: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def summarise(variant: str, concurrency: int, outcomes: Sequence[RequestOutcome], wall_s: float, slo: Slo) -> LoadLevel:
    """The level's record from its requests and its wall time (first request sent to last one finished)."""
    done = [o for o in outcomes if o.error is None]
    ttfts = [o.ttft_s for o in done if o.ttft_s is not None]
    tpots = [o.tpot_s for o in done if o.tpot_s is not None]
    good = sum(1 for o in done if slo.met(o))
    tokens = sum(o.output_tokens for o in done)
    errors = list(dict.fromkeys(o.error for o in outcomes if o.error is not None))
    return LoadLevel(
        variant=variant, concurrency=concurrency, requests=len(outcomes), completed=len(done), errors=len(outcomes) - len(done),
        good=good, output_tokens=tokens, wall_s=wall_s,
        throughput_tok_s=tokens / wall_s if wall_s > 0 else None,
        goodput_rps=good / wall_s if wall_s > 0 else None,
        ttft_p50_s=_percentile(ttfts, 50), ttft_p95_s=_percentile(ttfts, 95),
        tpot_p50_s=_percentile(tpots, 50), tpot_p95_s=_percentile(tpots, 95),
        error_samples=tuple(errors[:MAX_ERROR_SAMPLES]),
    )
