"""A served engine as a change: the side runs on an OpenAI-compatible server (vLLM, llama.cpp), given or launched."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..gate.limits import shown
from .base import Change, ChangeError
from .errors import one_of

BackendKind = Literal["transformers", "openai"]
ServedApi = Literal["completions", "chat"]
ServedTokenizer = Literal["local", "server"]
ColdTiming = Literal["verify", "assume"]
_FRACTION = re.compile(r"\d{1,9}(\.\d{1,9})?(/\d{1,9}(\.\d{1,9})?)?")
_SERVED_KEYS = ("base_url", "base_urls", "launch", "api", "max_concurrency", "tokenizer", "kv_bytes_per_element", "cold_timing")


@dataclass(frozen=True)
class ServedEngine(
    Change, kind="served", order=0, keys=("launch", "backend", *(k for k in _SERVED_KEYS if k != "launch")), stage="serve",
    in_process_only=False,
):
    """`backend: openai` with `base_url(s)` of a running server or `launch: {command: ...}` to start one per side.

    What the engine applies (its KV dtype, RoPE flags) goes in its launch command, so a launch that differs from
    the baseline's counts as a change of computation for the no-op guard."""

    base_urls: tuple[str, ...] = ()
    launch: Any = None  # served.launch.LaunchSpec
    api: ServedApi = "completions"
    max_concurrency: int = 1
    tokenizer: ServedTokenizer = "local"  # whose tokenizer builds the token-exact prompts: ours, or the engine's
    kv_bytes_per_element: float | None = None  # what the engine stores per K/V element (llama.cpp q8_0: 34/32)
    # "verify": each timed request is started cold and the engine's counters must say so; "assume": an engine
    # without a prefix cache (or counter) whose timings the gate may approve on unverified.
    cold_timing: ColdTiming = "verify"

    @classmethod
    def parse(cls, side: Mapping[str, Any]) -> ServedEngine | None:
        kind = one_of(side.get("backend", "transformers"), "backend", get_args(BackendKind))
        keys = [k for k in _SERVED_KEYS if k in side]
        if kind != "openai":
            if keys:
                raise ChangeError(keys[0], "only applies to a served model", "add backend: openai, or remove it")
            return None
        urls: list[str] = []
        if "base_url" in side:
            urls = [_string(side["base_url"], "base_url")]
        if "base_urls" in side:
            if urls:
                raise ChangeError("base_urls", "is given beside base_url", "use one of base_url and base_urls")
            raw = side["base_urls"]
            if not isinstance(raw, list) or not raw:
                raise ChangeError("base_urls", "expected a non-empty list", "write base_urls: [http://127.0.0.1:8000, ...]")
            urls = [_string(u, "base_urls") for u in raw]
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ChangeError("base_url", f"{shown(url[:200])} is not an http(s) URL", "write e.g. http://127.0.0.1:8000 (without /v1)")
        launch = None
        if "launch" in side:
            from ..backends.served.launch import LaunchError, parse_launch

            try:
                launch = parse_launch(side["launch"])
            except LaunchError as exc:
                raise ChangeError(exc.key, exc.problem, exc.fix) from None
        if bool(urls) == (launch is not None):
            raise ChangeError("backend", "openai needs either base_url(s) or launch",
                              "point at a running server, or give launch: {command: ...}")
        api = one_of(side.get("api", "completions"), "api", get_args(ServedApi))
        tokenizer = one_of(side.get("tokenizer", "local"), "tokenizer", get_args(ServedTokenizer))
        concurrency = side.get("max_concurrency", 1)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ChangeError("max_concurrency", f"expected an integer >= 1, got {shown(concurrency)}"[:200],
                              "write a whole number such as 4")
        cold = one_of(side.get("cold_timing", "verify"), "cold_timing", get_args(ColdTiming))
        return cls(tuple(urls), launch, api, concurrency, tokenizer, _bytes_per_element(side.get("kv_bytes_per_element")), cold)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ServedEngine | None:
        if record.get("backend", "transformers") != "openai":
            return None
        from ..backends.served.launch import LaunchSpec

        launch = record.get("launch")
        return cls(tuple(record.get("base_urls") or ()), None if launch is None else LaunchSpec(**launch),
                   record.get("api", "completions"), record.get("max_concurrency", 1), record.get("tokenizer", "local"),
                   record.get("kv_bytes_per_element"), record.get("cold_timing", "verify"))

    def record(self) -> dict[str, Any]:
        return {"backend": "openai", "base_urls": list(self.base_urls),
                "launch": None if self.launch is None else dataclasses.asdict(self.launch), "api": self.api,
                "max_concurrency": self.max_concurrency, "tokenizer": self.tokenizer,
                "kv_bytes_per_element": self.kv_bytes_per_element, "cold_timing": self.cold_timing}

    def describe(self) -> tuple[tuple[str, str], ...]:
        where = f"launched: {self.launch.command}" if self.launch is not None else ", ".join(self.base_urls)
        extras = [f"api {self.api}"] if self.api != "completions" else []
        extras += [f"{self.max_concurrency} in flight"] if self.max_concurrency != 1 else []
        extras += ["the engine's tokenizer"] if self.tokenizer == "server" else []
        extras += ["timings assumed cold"] if self.cold_timing == "assume" else []
        if self.kv_bytes_per_element is not None:
            extras.append(f"KV {self.kv_bytes_per_element:g} bytes/element")
        return (("backend", f"openai ({where})" + "".join(f", {e}" for e in extras)),)

    def check(self, side: Any, sweep: Any) -> None:
        for change in side.changes:
            if change.in_process_only:
                raise ChangeError(change.keys[0], "is applied by the engine of a served model, not by pytest-longctx",
                                  "put the engine's flag in launch.command (e.g. --kv-cache-dtype fp8)")

    def changes_computation(self) -> bool:
        return self.launch is not None

    def served(self) -> ServedEngine:
        return self


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ChangeError(key, f"expected a non-empty string, got {type(value).__name__}", "give a URL in quotes if needed")
    return value


def _bytes_per_element(value: Any) -> float | None:
    """A number, or a fraction as engines document block formats ("34/32": 32 int8 values and an fp16 scale)."""
    fix = "write bytes per K/V element, e.g. 2 (f16) or 34/32 (llama.cpp q8_0)"
    if value is None:
        return None
    if isinstance(value, str):
        from fractions import Fraction

        text = value.replace(" ", "")
        try:
            # Digits and one slash only: Fraction("1e999999999") would spend minutes building the integer.
            if not _FRACTION.fullmatch(text):
                raise ValueError(text)
            value = float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise ChangeError("kv_bytes_per_element", f"{shown(value[:100])} is not a number", fix) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.01 <= value <= 8.0:
        raise ChangeError("kv_bytes_per_element", f"{shown(value)} is not a number in [0.01, 8]"[:200], fix)
    return float(value)


CHANGE = ServedEngine
