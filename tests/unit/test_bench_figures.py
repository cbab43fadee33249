"""The benchmark's figures survive the samples a loaded machine produces: none at all, a stamp
never taken (NaN, written to results.json as null), a side that timed out, an ack stamped
after the client already held the write. A smoke on a busy CI machine once reported change
latency "p50 -1.6 ms p99 nan ms" and then crashed drawing it (`_cdf`: None * float); these
feed the same code paths (the parts' own summaries, the JSON round trip, the summary table
and every plot) such samples."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import findings
from bench.churn import Pass, lags_of, report
from bench.latency import Sample
from bench.latency import summarize as latency_summary
from bench.plots import draw
from bench.stats import cdf_points, percentile, shown, summary
from bench.workload import zk_host

pytestmark = pytest.mark.unit

NAN = math.nan


def test_a_summary_leaves_out_missing_samples_and_counts_them() -> None:
    figures = summary([0.2, None, NAN, math.inf, 0.1], censored=[NAN, 3.0])
    assert figures["count"] == 3 and figures["censored"] == 1 and figures["missing"] == 4
    assert figures["p50"] == pytest.approx(0.2) and figures["max"] == 3.0
    assert all(math.isfinite(v) for v in figures.values())
    empty = summary([], [])
    assert empty["count"] == 0 and math.isnan(empty["p99"]) and math.isnan(empty["mean"])
    only_missing = summary([None, NAN])
    assert only_missing["missing"] == 2 and math.isnan(only_missing["p50"])
    negative = summary([-0.5, 0.5])  # a summary reports what it is given, sorted right
    assert negative["p50"] == 0.0 and negative["max"] == 0.5
    assert math.isnan(percentile([None, NAN], 99))


def test_cdf_points_and_labels_skip_what_is_missing() -> None:
    assert cdf_points([]) == [] and cdf_points([None, NAN]) == []
    assert cdf_points([0.3, None, 0.1, NAN]) == [[0.1, 0.5], [0.3, 1.0]]
    assert shown(None, ".1f", " ms") == "n/a" and shown(NAN, ".1f") == "n/a"
    assert shown(0.0123, ".1f", " ms", 1e3) == "12.3 ms"


def test_change_latency_cannot_go_negative_and_counts_timeouts() -> None:
    samples = [
        # the client held the write 1.6 ms before kazoo's thread stamped the ack
        Sample("add", issued=10.0, acked=10.0036, fired=10.0019, held=10.002),
        Sample("remove", issued=20.0, acked=20.001, fired=20.002, held=20.030),
        # the client never held it: timed out, waited 60 s
        Sample("add", issued=30.0, acked=30.001, fired=30.002, gave_up=90.0),
        # nothing answered at all, not even the ack
        Sample("remove", issued=100.0, gave_up=160.0),
    ]
    result = latency_summary(samples)
    ours = result["all"]["ours"]
    assert result["timed_out"] == 2 and result["held_before_ack"] == 1
    assert ours["count"] == 4 and ours["censored"] == 2 and ours["missing"] == 0
    assert 0 < ours["p50"] <= ours["p99"] <= 60.0
    assert result["all"]["ours_from_ack"]["p50"] >= 0
    assert result["all"]["kazoo_watch"]["censored"] == 1
    for name, points in result["cdf"].items():
        assert all(v >= 0 and math.isfinite(v) for v, _ in points), name


def test_churn_lag_is_from_the_write_call_even_when_the_ack_is_late_or_missing() -> None:
    ops: list[list[Any]] = [
        ["add", 1, "10.0.0.1", 1.0, 1.5, ""],  # acked after it was seen
        ["remove", 2, "10.0.0.2", 2.0, None, "ConnectionLoss()"],  # never acked
        ["add", 3, "10.0.0.3", 3.0, 3.001, ""],  # never seen: waited until 10
    ]
    seen = {(zk_host(1), "10.0.0.1", 1): 1.2, (zk_host(2), "10.0.0.2", -1): 2.3}
    found, censored = lags_of(ops, seen, gave_up=10.0)
    assert found == pytest.approx([0.2, 0.3]) and censored == pytest.approx([7.0])


def results_of(samples: list[Sample], ops: list[list[Any]], seen: dict[Any, float]) -> Any:
    """A results file as the suite writes it (NaN as null), from the parts' own code."""
    change = {"services": 200, "samples": len(samples), **latency_summary(samples)}
    change["target"] = {"met": None}
    change["shards"] = {"4": {**change, "target": {"met": False}}}
    ours = Pass(ops, 2.0, seen, 10.0, 0.5, True, 0, NAN, True)
    empty = Pass(ops, 2.0, {}, 10.0, NAN, False, 0, NAN, False)
    parts: dict[str, Any] = {
        "cold_start": {"static": {"50": {"ours": {"seconds": NAN}, "baseline": {"seconds": 0.2},
                                         "ratio": NAN}}},
        "memory": {"static": {"50": {"ours_mib": 80.0, "baseline_mib": NAN, "ratio": None}}},
        "change_latency": change,
        "churn": {"runs": {"0": report("0", ours, empty, 200, 100.0)}},
        "fanout": {"services": 200, "response_bytes": 1000,
                   "clients": {"1": {"ours": {"p50": NAN}, "bare": {"p50": 0.01}, "ratio": NAN}}},
    }  # fmt: skip
    machine = {"cores": 2, "ram_mib": 1024, "cpu": "x", "kernel": "6", "python": "3.11",
               "grpcio": "1", "protobuf": "7", "kazoo": "2", "pyyaml": "6",
               "load_average_start": [1.0], "git_head": "0" * 12, "git_dirty": False}  # fmt: skip
    results: dict[str, Any] = {"machine": machine, "runs": [], "parts": parts}
    results["summary"] = findings.summarize(parts)
    return json.loads(json.dumps(findings.clean(results)))


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_the_table_and_every_plot_take_missing_figures(tmp_path: Path, kind: str) -> None:
    if kind == "missing":
        samples = [Sample("add", 1.0, acked=NAN, fired=NAN, held=NAN, gave_up=2.0),
                   Sample("remove", 3.0, acked=3.01, fired=2.99, held=2.995)]  # fmt: skip
        ops: list[list[Any]] = [["add", 1, "10.0.0.1", 1.0, None, "lost"]]
        seen = {(zk_host(1), "10.0.0.1", 1): NAN}
    else:
        samples, ops, seen = [Sample("add", 1.0, gave_up=NAN)], [["add", 1, "a", 1.0, 1.1, ""]], {}
    results = results_of(samples, ops, seen)
    # what the smoke crashed on: a CDF point and a p99 that are null in results.json
    results["parts"]["change_latency"]["cdf"]["ours"].append([None, 1.0])
    results["parts"]["change_latency"]["all"]["ours"]["p99"] = None
    results["parts"]["churn"]["runs"]["0"]["cdf"]["kazoo_watch"] = [[None, None], [-0.1, 0.5]]
    results["summary"] = findings.summarize(results["parts"])
    table = findings.markdown(results, draw(results, tmp_path))
    assert "n/a" in table
    for png in ("cold_start", "memory", "change_latency_cdf", "churn_lag", "fanout"):
        assert (tmp_path / f"{png}.png").stat().st_size > 1000, png
    cold = next(r for r in results["summary"] if r["target"].startswith("(a)"))
    assert cold["met"] is None  # no verdict without a figure
