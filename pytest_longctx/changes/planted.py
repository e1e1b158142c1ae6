"""Planted regressions: a known slowdown, memory growth or eviction on the candidate, to prove a gate catches it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..gate.limits import shown
from .base import Change, ChangeError
from .errors import settings_mapping


@dataclass(frozen=True)
class Planted(Change, kind="planted", order=200, keys=("planted",), stage="planted", computation=False):
    """`planted: {decode_delay: F, kv_copies: N, window: W}` on the candidate of a self-check gate.

    decode_delay adds F x each decode step's own time; kv_copies holds N copies of the cache while it is measured;
    window keeps only the last W prompt tokens' K/V after prefill. Refused on the baseline: a slowed baseline would
    let a slower candidate approve."""

    decode_delay_fraction: float = 0.0
    copies: int = 1
    window: int | None = None

    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> Planted | None:
        raw = side.get("planted")
        if raw is None:
            return None
        raw = settings_mapping(raw, "planted", ("decode_delay", "kv_copies", "window"), "write planted: {decode_delay: 0.25}")
        delay = raw.get("decode_delay", 0.0)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0.0 <= delay <= 100.0:
            raise ChangeError("planted.decode_delay", f"{shown(delay)} is not a number in [0, 100]"[:200], "write a fraction such as 0.25")
        copies = raw.get("kv_copies", 1)
        window = raw.get("window")
        for key, value in (("kv_copies", copies), ("window", 1 if window is None else window)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ChangeError(f"planted.{key}", f"expected an integer >= 1, got {shown(value)}"[:200], "write a whole number")
        if copies > 64:
            raise ChangeError("planted.kv_copies", f"{copies} copies of the cache is more than 64", "use at most 64")
        planted = cls(float(delay), copies, window)
        return None if planted == cls() else planted

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Planted | None:
        if "planted" in record:
            return super().from_record(record)  # type: ignore[return-value]
        # Results files before changes were components recorded the three settings flat.
        planted = cls(float(record.get("planted_decode_delay") or 0.0), int(record.get("planted_kv_copies") or 1),
                      record.get("planted_window"))
        return None if planted == cls() else planted

    def record(self) -> dict[str, Any]:
        return {"planted": {"decode_delay": self.decode_delay_fraction, "kv_copies": self.copies, "window": self.window}}

    def describe(self) -> tuple[tuple[str, str], ...]:
        parts = [f"decode delay {self.decode_delay_fraction:g}"] if self.decode_delay_fraction else []
        parts += [f"{self.copies} KV copies"] if self.copies != 1 else []
        parts += [f"window {self.window}"] if self.window is not None else []
        return (("planted", ", ".join(parts)),)

    def check(self, side: Any, sweep: Any) -> None:
        if side.name == "baseline":
            raise ChangeError("planted", "plants a regression on the baseline, which would let a slower or worse "
                              "candidate approve", "plant regressions on the candidate (candidate.planted)")
        if self.window is not None and side.find("window") is not None:
            raise ChangeError("planted.window", "cannot be combined with attention", "use attention: {window: N} alone")

    @property
    def reuse(self) -> str:  # type: ignore[override]
        # A planted window evicts the prompt's start right after prefill: nothing of it is left to store.
        return "never" if self.window is not None else "any"

    @property
    def drafts(self) -> bool:  # type: ignore[override]
        return self.window is None and not self.decode_delay_fraction

    def changes_kv(self) -> bool:
        return self.window is not None  # a delay or extra copies leave the K/V as they are

    def after_prefill(self, cache: Any) -> None:
        if self.window is not None:
            from ..backends.kv_cache import keep_last

            keep_last(cache, self.window)

    def kv_tokens(self, prompt: int, new: int) -> int | None:
        return None if self.window is None else min(prompt, self.window) + max(new - 1, 0)

    def decode_delay(self) -> float:
        return self.decode_delay_fraction

    def kv_copies(self) -> int:
        return self.copies


CHANGE = Planted
