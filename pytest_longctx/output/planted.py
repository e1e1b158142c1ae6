"""The notice every summary leads with when the candidate carries planted regressions (a self-check gate)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..gate.results import GateResults


def planted_regressions(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The regressions a recorded side (`VariantSpec.to_dict()`) plants, e.g. ("decode_delay +25%", "kv_copies x3")."""
    nested = spec.get("planted")
    # Sides record `planted: {decode_delay, kv_copies, window}`; results before changes were components, flat keys.
    planted = nested if isinstance(nested, Mapping) else {k: spec.get(f"planted_{k}") for k in ("decode_delay", "kv_copies", "window")}
    found = []
    delay = planted.get("decode_delay") or 0.0
    if delay:
        found.append(f"decode_delay +{delay * 100:g}%")
    if planted.get("kv_copies", 1) not in (None, 1):
        found.append(f"kv_copies x{planted['kv_copies']}")
    if planted.get("window") is not None:
        found.append(f"window {planted['window']} tokens")
    return tuple(found)


def planted_notice(results: GateResults) -> str | None:
    """"candidate has PLANTED regressions: ..." when it does: its verdict measures the gate, not a change."""
    candidate = results.gate.get("candidate")
    planted = planted_regressions(candidate) if isinstance(candidate, Mapping) else ()
    if not planted:
        return None
    return f"candidate has PLANTED regressions: {', '.join(planted)} (a self-check of the gate, not a real change)"
