"""Jittered exponential backoff: how long to wait before the next try, for every retry
loop of the server (registry watchers, their supervisor, the pipeline's rebuilds).

Apart from both so that neither imports the other for it.
"""

from __future__ import annotations

import random


def backoff(attempt: int, first: float = 0.5, cap: float = 30.0) -> float:
    """`first` doubling per attempt up to `cap`, +-25 %."""
    # jitter spreads retries out; nothing secret depends on it
    return float(min(cap, first * 2.0**attempt) * random.uniform(0.75, 1.25))  # noqa: S311
