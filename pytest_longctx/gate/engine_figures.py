"""What served engines say about themselves, per side: the KV cache they allocated, and whether timed cells ran cold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .results import CellResult, Metrics

COLD_OPT_OUT = "cold_timing: assume"  # the side key that accepts timings an engine cannot verify as cold


def kv_engine(cells: Sequence[CellResult], longest: int) -> dict[str, Any] | None:
    """One side's engine KV figures (the first cell that carries them; they are the server's, so all agree)."""
    cell = next((c for c in cells if c.kv_capacity_tokens), None)
    if cell is None or cell.kv_capacity_tokens is None:
        return None
    capacity, size, slots = cell.kv_capacity_tokens, cell.kv_capacity_bytes, cell.kv_slots
    fit = capacity // max(longest, 1)
    return {
        "capacity_tokens": capacity,
        "bytes": size,
        "bytes_per_token": None if size is None else size / capacity,
        "slots": slots,
        "sequences": fit if slots is None else min(fit, slots),  # of the gate's longest length, at once
    }


def kv_figures(labelled: Mapping[str, Sequence[CellResult]], longest: int, memory_ratio: float | None, *,
               kv_memory: bool = True) -> dict[str, Any]:
    """Metrics fields from the engines' KV figures; a KV memory_ratio (`kv_memory`) becomes the ratio of their
    bytes per token of cache when both sides' engines report bytes (the honest comparable: size over cells)."""
    engines = {label: kv for label, cells in labelled.items() if (kv := kv_engine(cells, longest)) is not None}
    per_token = {label: kv["bytes_per_token"] for label, kv in engines.items() if kv["bytes_per_token"]}
    if len(per_token) == 2:
        memory_ratio = per_token["candidate"] / per_token["baseline"] if kv_memory else memory_ratio
        capacity_ratio: float | None = per_token["baseline"] / per_token["candidate"]
    else:  # tokens per byte from what each cell held: the measured cache, the engine's gauge, or the formula
        cell_per_token = {label: _bytes_per_token(cells) for label, cells in labelled.items()}
        base, cand = cell_per_token.get("baseline"), cell_per_token.get("candidate")
        capacity_ratio = None if not base or not cand else base / cand
    return {
        "kv_engine": engines,
        # Empty unless an engine reported its cache, so in-process results show no capacity row.
        "kv_capacity_tokens": {label: engines.get(label, {}).get("capacity_tokens") for label in labelled} if engines else {},
        "kv_capacity_ratio": capacity_ratio,
        "memory_ratio": memory_ratio,
    }


def _bytes_per_token(cells: Sequence[CellResult]) -> float | None:
    pairs = [(c.kv_bytes, c.kv_tokens) for c in cells if c.kv_bytes and c.kv_tokens]
    return sum(b for b, _ in pairs) / sum(t for _, t in pairs) if pairs else None


def cold_checks(labelled: Mapping[str, Sequence[CellResult]]) -> dict[str, str]:
    """Per side, the cold_check values of its timed cells ("n/a" when none was timed on a served engine)."""
    return {label: "/".join(sorted({c.cold_check for c in cells if c.cold_check != "n/a"})) or "n/a"
            for label, cells in labelled.items()}


def unverified_timing(metrics: Metrics) -> str | None:
    """Why the timings cannot back an approval: a side whose engine could not say its timed prompts ran cold."""
    sides = [label for label, check in metrics.cold_check.items() if "unverified" in check.split("/")]
    if not sides or not metrics.latency_compared:
        return None
    return (f"the {' and '.join(sides)} engine reports no prefix-cache counter, so its timed cells may have prefilled "
            f"from cache (a warm prefill); set {COLD_OPT_OUT} on that side to accept its timings unverified")


def engine_notes(metrics: Metrics) -> list[str]:
    """How the timed cells stood on coldness and the engines' own KV figures, in words, for the decision's reasons."""
    words = {"engine": "verified cold by the engine's counters", "assumed": f"assumed cold ({COLD_OPT_OUT})",
             "unverified": "NOT verified cold (no counter)"}
    served = {label: check for label, check in metrics.cold_check.items() if check != "n/a"}
    stands = [f"{label} " + ", ".join(words.get(c, c) for c in check.split("/")) for label, check in served.items()]
    notes = [f"timed cells: {'; '.join(stands)}"] if stands else []
    for label, kv in metrics.kv_engine.items():
        size = "" if kv.get("bytes") is None else f" in {kv['bytes'] / 2**20:.2f} MiB ({kv['bytes_per_token']:.0f} bytes per token)"
        slots = "" if kv.get("slots") is None else f", {kv['slots']} sequence slot(s)"
        notes.append(f"{label} engine's KV cache: {kv['capacity_tokens']} tokens{size}{slots}; "
                     f"{kv['sequences']} sequence(s) of the longest length fit at once")
    if metrics.kv_capacity_ratio is not None:
        notes.append(f"KV capacity at equal memory, candidate/baseline: {metrics.kv_capacity_ratio:.3f}")
    return notes
