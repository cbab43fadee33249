"""Hypothesis profiles for the property tests here.

`ci` (the default) is derandomized: every run tries the same inputs, so a failure in CI is a
failure on every machine, never a flake, and writes no example database into the tree.
`explore` (HYPOTHESIS_PROFILE=explore) draws fresh inputs, many more of them: run it by hand
to look for new failures, and add what it finds to corpus/ (read by the tests on every run).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    database=None,
    deadline=None,
    max_examples=20_000,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
