"""Effective context length: the longest swept length up to which recall holds, and how a change moves it."""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_THRESHOLD = 0.85


def effective_length(recall_by_length: Mapping[int, float], threshold: float = DEFAULT_THRESHOLD) -> int | None:
    """The largest swept length at which recall stays at or above `threshold`.

    "Stays" means every swept length up to and including it has recall >= threshold, so a lucky long
    length after a failing shorter one does not count (as RULER's effective length). None when even the
    shortest length falls below.

    Raises:
        ValueError: for no lengths, a length that is not a positive integer, or a recall outside [0, 1].
    """
    _check(recall_by_length, "recall_by_length")
    effective = None
    for length in sorted(recall_by_length):
        if recall_by_length[length] < threshold:
            break
        effective = length
    return effective


def effective_length_ratio(
    baseline: Mapping[int, float], candidate: Mapping[int, float], threshold: float = DEFAULT_THRESHOLD
) -> float | None:
    """The candidate's effective length over the baseline's, both swept at the same lengths.

    1.0 when the change keeps it; 0.0 when the candidate holds at no length while the baseline does;
    None when the baseline holds at no length (there is nothing to compare against).
    """
    _check(baseline, "baseline")
    _check(candidate, "candidate")
    if set(baseline) != set(candidate):
        raise ValueError(
            f"baseline and candidate were swept at different lengths ({sorted(baseline)} vs {sorted(candidate)})"
        )
    base = effective_length(baseline, threshold)
    if base is None:
        return None
    cand = effective_length(candidate, threshold)
    return 0.0 if cand is None else cand / base


def _check(recall_by_length: Mapping[int, float], name: str) -> None:
    if not recall_by_length:
        raise ValueError(f"{name} has no lengths")
    for length, recall in recall_by_length.items():
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise ValueError(f"{name}: length {length!r} is not a positive integer")
        if not 0.0 <= recall <= 1.0:
            raise ValueError(f"{name}: recall {recall!r} at length {length} is outside [0, 1]")
