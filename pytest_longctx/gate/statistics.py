"""The statistics a gate's checks read: paired intervals and tests over cells, recall power, and sample sizes.

Plain functions of numbers (scipy and numpy imported inside them); see docs/statistics.md for the methods.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

BOOTSTRAP_RESAMPLES = 2000
POWER = 0.80  # the power a "smallest detectable drop" is stated at


@functools.lru_cache(maxsize=4096)
def paired_difference_ci(baseline_only: int, candidate_only: int, n: int, confidence: float) -> tuple[float, float] | None:
    """Exact CI of the paired recall difference (candidate - baseline) over `n` cells.

    Conditional on the discordant cells, the share the candidate wins is binomial; its Clopper-Pearson
    interval maps to the difference as (2p - 1) x discordant / n. No discordant cell: the difference is 0.
    (Cached: sequential looks and power searches ask for the same small-integer cases again and again.)
    """
    if n == 0:
        return None
    discordant = baseline_only + candidate_only
    if discordant == 0:
        return (0.0, 0.0)
    from scipy.stats import binomtest

    ci = binomtest(candidate_only, discordant, 0.5).proportion_ci(confidence_level=confidence, method="exact")
    scale = discordant / n
    return ((2 * ci.low - 1) * scale, (2 * ci.high - 1) * scale)


def mcnemar_exact_p(baseline_only: int, candidate_only: int) -> float:
    """Two-sided exact McNemar test: are the discordant cells split unevenly between the variants?"""
    discordant = baseline_only + candidate_only
    if discordant == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(candidate_only, discordant, 0.5).pvalue)


def p95_ratio_ci(base: Sequence[float], cand: Sequence[float], confidence: float) -> tuple[float, float] | None:
    """Paired bootstrap CI of p95(candidate) / p95(baseline), resampling cells (seeded: same data, same CI)."""
    if len(base) < 3 or len(base) != len(cand):
        return None
    import numpy as np
    from scipy.stats import bootstrap

    def statistic(b: np.ndarray, c: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.percentile(c, 95, axis=axis) / np.percentile(b, 95, axis=axis)

    res = bootstrap(
        (np.asarray(base, dtype=float), np.asarray(cand, dtype=float)), statistic, paired=True, vectorized=True,
        n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=confidence, method="percentile", rng=np.random.default_rng(0),
    )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return None if np.isnan(low) or np.isnan(high) else (low, high)


def mean_delta_ci(deltas: Sequence[float], confidence: float) -> tuple[float, float] | None:
    """Bootstrap CI (expanded percentile, seeded) of the mean of per-cell paired differences; None under 3 cells.

    Every difference equal (an unchanged computation gives exact zeros): the interval is that value, since
    resampling cannot move it.
    """
    if len(deltas) < 3:
        return None
    import numpy as np

    values = np.asarray(deltas, dtype=float)
    if float(values.max() - values.min()) == 0.0:
        return (float(values[0]), float(values[0]))
    low, high = mean_delta_ci_rows(values[None, :], confidence)
    return float(low[0]), float(high[0])


MEAN_RESAMPLES = 10000  # the expanded tails sit far out: enough resamples that they are not the extremes alone


def expanded_confidence(confidence: float, n: int) -> float:
    """The level at which a percentile bootstrap of a mean covers as a t interval would (Hesterberg's expanded
    percentile interval): the z quantile is stretched to sqrt(n / (n - 1)) x t(n - 1). The plain percentile
    interval is too narrow for few cells: at 12 cells and a one-sided 0.4 % it rejects a true zero 2.7x as often."""
    from scipy.stats import norm, t

    tail = (1 - confidence) / 2
    stretched = (n / (n - 1)) ** 0.5 * float(t.ppf(1 - tail, n - 1))
    return float(1 - 2 * norm.sf(stretched))


def mean_delta_ci_rows(rows: Any, confidence: float) -> tuple[Any, Any]:
    """mean_delta_ci for each row of a 2-D array at once (simulations of many gates): arrays of lows and highs."""
    import numpy as np
    from scipy.stats import bootstrap

    data = np.asarray(rows, dtype=float)
    res = bootstrap((data,), np.mean, axis=-1, vectorized=True, n_resamples=MEAN_RESAMPLES, batch=max(1, 2_000_000 // data.size),
                    confidence_level=expanded_confidence(confidence, data.shape[-1]), method="percentile",
                    rng=np.random.default_rng(0))
    return np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high)


def wilcoxon_p(deltas: Sequence[float]) -> float | None:
    """Two-sided Wilcoxon signed-rank p of paired differences (zeros dropped); 1.0 when every difference is 0."""
    nonzero = [d for d in deltas if d != 0.0]
    if not deltas:
        return None
    if not nonzero:
        return 1.0
    from scipy.stats import wilcoxon

    return float(wilcoxon(nonzero).pvalue)


# ----------------------------------------------------------------------------- recall power


def _rejecting_losses(n: int, at_risk: int, confidence: float, threshold: float) -> list[int]:
    """The counts b of baseline-only cells (no candidate-only cell) whose exact paired interval lies below `threshold`.

    With no candidate-only cell the Clopper-Pearson upper end of the candidate's share is 1 - (alpha/2)^(1/b),
    so the difference's upper end is (1 - 2 (alpha/2)^(1/b)) b / n: the same interval paired_difference_ci gives.
    """
    half = (1 - confidence) / 2
    return [b for b in range(1, at_risk + 1) if (1 - 2 * half ** (1 / b)) * b / n < threshold - 1e-12]


def recall_power(n: int, baseline_recall: float, drop: float, *, confidence: float = 0.95, threshold: float = 0.0) -> float:
    """Exact power of the paired recall check to reject a true drop of `drop` over `n` cells.

    Model: the baseline finds round(n x baseline_recall) cells; the candidate loses each of them independently
    with probability drop / baseline_recall (an expected drop of `drop`) and gains none. The check rejects when
    the exact paired interval at `confidence` lies below `threshold` (0 for a strict rule, -margin for a
    non-inferiority one). The power sums the binomial probabilities of the rejecting loss counts: no simulation.
    """
    at_risk = round(n * baseline_recall)
    if n <= 0 or at_risk == 0 or drop <= 0:
        return 0.0
    return _power(at_risk, _rejecting_losses(n, at_risk, confidence, threshold), min(1.0, drop / baseline_recall))


def _power(at_risk: int, rejecting: list[int], p_loss: float) -> float:
    if not rejecting:
        return 0.0
    from scipy.stats import binom

    return float(binom.pmf(rejecting, at_risk, p_loss).sum())


def min_detectable_drop(n: int, baseline_recall: float, *, confidence: float = 0.95, threshold: float = 0.0,
                        power: float = POWER) -> float | None:
    """The smallest true recall drop (on a 0.005 grid) the check rejects with `power`; None when no drop up to the
    baseline's recall would be (too few cells, or a baseline at the floor)."""
    at_risk = round(n * baseline_recall)
    if n <= 0 or at_risk == 0:
        return None
    rejecting = _rejecting_losses(n, at_risk, confidence, threshold)  # the same for every drop: computed once
    steps = int(baseline_recall / 0.005 + 1e-9)
    for i in range(1, steps + 1):
        if _power(at_risk, rejecting, min(1.0, i * 0.005 / baseline_recall)) >= power:
            return round(i * 0.005, 3)
    return None


def cells_needed(drop: float, baseline_recall: float, *, confidence: float = 0.95, threshold: float = 0.0,
                 power: float = POWER, limit: int = 1_000_000) -> int | None:
    """About how many paired cells reject a true drop of `drop` with `power` (doubling, then bisection; the exact
    power steps with the integer counts, so this is the first n found past the target, not a guaranteed minimum)."""
    if drop <= 0 or drop > baseline_recall:
        return None

    def enough(n: int) -> bool:
        return recall_power(n, baseline_recall, drop, confidence=confidence, threshold=threshold) >= power

    high = 4
    while not enough(high):
        high *= 2
        if high > limit:
            return None
    low = high // 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def more_seeds_to_decide(seeds: int, half_width: float, distance: float) -> int | None:
    """Roughly how many more seeds shrink an interval's half-width below `distance`, with width ~ 1/sqrt(n).

    None when the effect sits on the threshold (no number of seeds decides it)."""
    if distance <= 1e-12:
        return None
    if half_width <= distance:
        return 0
    return max(1, math.ceil(seeds * (half_width / distance) ** 2) - seeds)
