"""Summaries of samples as the results file reports them: percentiles and CDF points.

Percentiles interpolate linearly between order statistics (numpy's default), so p99 of 100
samples is not just the maximum. Samples that never completed before their deadline are
passed as `censored`: they count as at least their deadline, so a run where writes never
arrive cannot report a good p99, and how many there were is reported beside (`censored`).

A sample that is missing (None, NaN or infinite: a stamp that was never taken) is not a
duration at all: it is left out of every figure and counted as `missing`, so one lost stamp
neither poisons the percentiles with NaN nor crashes the plots (JSON has no NaN: it would be
written as null). A smoke on a loaded CI machine once reported "p99 nan" that way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TypeGuard


def is_figure(value: object) -> TypeGuard[float]:
    """A number that can be summed, drawn or printed (not None, a bool, NaN or infinite)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def finite(samples: Iterable[float | None]) -> list[float]:
    """The samples that are figures (None, NaN and infinities left out)."""
    return [float(s) for s in samples if is_figure(s)]


def shown(value: object, spec: str, unit: str = "", scale: float = 1.0) -> str:
    """A figure as text (`value * scale` in format `spec`, then `unit`); `n/a` where it is
    missing (a results file writes NaN as null)."""
    return f"{value * scale:{spec}}{unit}" if is_figure(value) else "n/a"


def percentile(samples: Sequence[float | None], q: float) -> float:
    """The q-th percentile (0-100) of the finite samples; NaN when there are none."""
    ordered = sorted(finite(samples))
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(
    samples: Sequence[float | None], censored: Sequence[float | None] = ()
) -> dict[str, float]:
    """count, censored, missing, p50, p90, p99, max and mean (seconds in, seconds out).
    `count` is the samples with a figure (censored included); `missing` those without."""
    measured, waited = finite(samples), finite(censored)
    values = [*measured, *waited]
    return {
        "count": float(len(values)),
        "censored": float(len(waited)),
        "missing": float(len(samples) + len(censored) - len(values)),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
        "mean": sum(values) / len(values) if values else math.nan,
    }


def cdf_points(samples: Sequence[float | None], points: int = 200) -> list[list[float]]:
    """[[value, fraction <= value], ...] of the finite samples, thinned to about `points`
    pairs for the JSON."""
    ordered = sorted(finite(samples))
    if not ordered:
        return []
    step = max(1, len(ordered) // points)
    picked = list(range(0, len(ordered), step))
    if picked[-1] != len(ordered) - 1:
        picked.append(len(ordered) - 1)
    return [[ordered[i], (i + 1) / len(ordered)] for i in picked]


def median(samples: Sequence[float | None]) -> float:
    return percentile(samples, 50)
