"""The notice every summary leads with when the candidate carries planted regressions (a self-check gate)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..gate.results import GateResults


def planted_regressions(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The regressions a recorded side (`VariantSpec.to_dict()`) plants, e.g. ("decode_delay +25%", "kv_copies x3")."""
    found = []
    delay = spec.get("planted_decode_delay") or 0.0
    if delay:
        found.append(f"decode_delay +{delay * 100:g}%")
    if spec.get("planted_kv_copies", 1) not in (None, 1):
        found.append(f"kv_copies x{spec['planted_kv_copies']}")
    if spec.get("planted_window") is not None:
        found.append(f"window {spec['planted_window']} tokens")
    return tuple(found)


def planted_notice(results: GateResults) -> str | None:
    """"candidate has PLANTED regressions: ..." when it does: its verdict measures the gate, not a change."""
    candidate = results.gate.get("candidate")
    planted = planted_regressions(candidate) if isinstance(candidate, Mapping) else ()
    if not planted:
        return None
    return f"candidate has PLANTED regressions: {', '.join(planted)} (a self-check of the gate, not a real change)"
