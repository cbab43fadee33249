"""The benchmark suite (bench/suite.py, `make bench`) at tiny scale, so that it cannot rot.

It runs the very command `make bench` runs, with `--smoke`: every part, a few seconds each,
against a real ZooKeeper, and parts (f) and (g) against the unmodified pilot-discovery on a
real kube-apiserver (built, or taken from the cache, as the integration tier does; without Go
those parts are skipped locally, and in CI, where every real component is required, that
fails). The numbers are only checked for sanity: a smoke on a busy CI machine says nothing
about performance, but what must hold whatever the load does (a change sent on its own shard
only, every write reaching the sidecar, the final state exact) is asserted.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from testbed.builds import kube_binaries, missing, pilot_discovery_binary
from testbed.zookeeper import ZOOKEEPER_JAR

pytestmark = pytest.mark.component

REPO = Path(__file__).resolve().parents[2]
PARTS = ("cold_start", "memory", "change_latency", "churn", "fanout", "istiod_cpu", "istiod_churn")


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_the_suite_runs_every_part_and_writes_sane_results(tmp_path: Path) -> None:
    if shutil.which("java") is None or not ZOOKEEPER_JAR.exists():
        missing("ZooKeeper 3.8 (Debian package `zookeeper`) and a Java runtime")
    # part (f)'s istiod and control plane, built here first (cached, shared with the
    # integration tier): on a cold machine their builds take longer than the suite's timeout
    # (without Go, locally, part (f) skips itself and the rest runs)
    if shutil.which("go") is not None or os.environ.get("MCPTEST_REQUIRE_REAL") == "1":
        pilot_discovery_binary()
        kube_binaries()
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bench.suite", "--smoke", "--fresh", "--out", str(out)]
    done = subprocess.run(
        [*command, "--workdir", str(tmp_path / "work")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    results = json.loads((out / "results.json").read_text())
    parts = results["parts"]
    for name in PARTS:
        assert name in parts, name
        assert "error" not in parts[name], parts[name].get("error")
    config = results["config"]
    per = config["instances"]

    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["ram_mib"] > 0
    assert machine["python"] and machine["grpcio"] and machine["protobuf"]

    for source in config["cold_sources"]:
        for scale, entry in parts["cold_start"][source].items():
            assert entry["ours"]["endpoints"] == int(scale) * per
            assert 0 < entry["ours"]["seconds"] < 60
            assert 0 < entry["baseline"]["seconds"] < 60
            assert entry["baseline"]["phases"]["endpoints"] == int(scale) * per
            if source == "zookeeper":  # the fastest of the walks tried, the old one beside
                assert entry["baseline"]["walk"] in [*config["zk_walks"], "previous"]
                assert 0 < entry["previous_baseline"]["seconds"] < 60
            assert finite(entry["ratio"])
            memory = parts["memory"][source][scale]
            assert memory["ours_mib"] > 10 and memory["baseline_mib"] > 10

    change = parts["change_latency"]
    assert change["samples"] == 2 * config["latency_samples"]
    assert change["timed_out"] == 0
    # figures are positive and within the deadline of a wait; how fast says nothing here (a
    # loaded CI machine once took a kazoo watch past 1 s)
    within = config["deadline"]
    assert 0 < change["all"]["ours"]["p50"] <= change["all"]["ours"]["p99"] < within
    assert change["all"]["ours_from_ack"]["p50"] >= 0
    assert 0 < change["all"]["kazoo_watch"]["p99"] < within
    assert change["cdf"]["ours"]

    for shards in config["latency_shards"]:
        if shards == 1:
            continue
        sharded = change["shards"][str(shards)]
        assert sharded["samples"] == 2 * config["latency_samples"]
        assert 0 < sharded["all"]["ours"]["p50"] <= sharded["all"]["ours"]["p99"] < within

    churn = parts["churn"]["runs"]["0"]
    assert churn["writes"] == int(config["churn_seconds"] * config["churn_rate"])
    assert churn["write_errors"] == 0
    assert churn["final_equal"] is True
    assert churn["lag"]["ours"]["censored"] == 0
    assert 0 < churn["lag"]["ours"]["p99"] < 30
    assert all(churn["cpu_ms_per_write"][who] > 0 for who in ("ours", "kazoo_watch"))

    for clients in map(str, config["fanout_clients"]):
        entry = parts["fanout"]["clients"][clients]
        assert 0 < entry["ours"]["p50"] < 30 and 0 < entry["bare"]["p50"] < 30

    istiod = parts["istiod_cpu"]
    if os.environ.get("MCPTEST_REQUIRE_REAL") == "1":
        assert "skipped" not in istiod, istiod["skipped"]
    if "skipped" not in istiod:
        assert istiod["istiod_holds_last_edit"] is True
        assert finite(istiod["versions"]["cpu_seconds"])
        assert finite(istiod["salted"]["cpu_seconds"])
        layouts = istiod["sharded"]["layouts"]
        assert sorted(layouts, key=int) == [str(n) for n in config["istiod_shards"]]
        for shards, layout in layouts.items():
            assert layout["istiod_holds_last_edit"] is True, shards
            # one changed service: a response on its own shard's stream, none elsewhere
            assert layout["pushes_on_the_home_shard_only"] == config["istiod_shard_pushes"]
            assert finite(layout["cpu_seconds_amortized"]) and layout["bytes_per_change"] > 0
        biggest = layouts[str(max(config["istiod_shards"]))]
        assert biggest["bytes_ratio"] < 1  # one shard's set is smaller than the whole

    istiod_churn = parts["istiod_churn"]
    if os.environ.get("MCPTEST_REQUIRE_REAL") == "1":
        assert "skipped" not in istiod_churn, istiod_churn["skipped"]
    if "skipped" not in istiod_churn:
        for scale in config["istiod_churn_scales"]:
            layouts = istiod_churn["scales"][str(scale)]["layouts"]
            for shards in config["istiod_churn_shards"]:
                passes = layouts[str(shards)]["patterns"]
                assert sorted(passes) == sorted(
                    f"{pattern}@{rate:g}"
                    for pattern in config["churn_patterns"]
                    for rate in config["istiod_churn_rates"]
                )
                for run in passes.values():
                    assert run["writes"] == int(config["istiod_churn_seconds"] * run["rate_target"])
                    assert run["write_errors"] == 0
                    assert run["final_equal"] is True, (shards, run["final_mismatched_hosts"])
                    assert run["lag"]["censored"] == 0
                    assert 0 < run["lag"]["p99"] < 30
                    assert run["istiod_cpu_per_second"] > 0 and run["server_cpu_per_second"] > 0

    assert results["summary"]
    drawn = ["cold_start", "memory", "change_latency_cdf", "churn_lag", "fanout"]
    if "skipped" not in istiod:
        drawn += ["istiod_cpu", "shards_istiod_cpu"]
    if "skipped" not in istiod_churn:
        drawn.append("istiod_churn")
    for png in drawn:
        assert (out / f"{png}.png").stat().st_size > 1000
    assert "| target |" in (out / "README.md").read_text()
