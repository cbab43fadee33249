"""Summaries of samples as the results file reports them: percentiles and CDF points.

Percentiles interpolate linearly between order statistics (numpy's default), so p99 of 100
samples is not just the maximum. Samples that never completed before their deadline are
passed as `censored`: they count as at least their deadline, so a run where writes never
arrive cannot report a good p99.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of samples; NaN when there are none."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(samples: Sequence[float], censored: Sequence[float] = ()) -> dict[str, float]:
    """count, p50, p90, p99, max and mean (seconds in, seconds out)."""
    values = [*samples, *censored]
    return {
        "count": float(len(values)),
        "censored": float(len(censored)),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": sum(values) / len(values) if values else math.nan,
    }


def cdf_points(samples: Sequence[float], points: int = 200) -> list[list[float]]:
    """[[value, fraction <= value], ...], thinned to about `points` pairs for the JSON."""
    ordered = sorted(samples)
    if not ordered:
        return []
    step = max(1, len(ordered) // points)
    picked = list(range(0, len(ordered), step))
    if picked[-1] != len(ordered) - 1:
        picked.append(len(ordered) - 1)
    return [[ordered[i], (i + 1) / len(ordered)] for i in picked]


def median(samples: Sequence[float]) -> float:
    return percentile(samples, 50)
