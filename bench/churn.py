"""Part (c), churn: provider additions and removals at a fixed rate (1,000/s) for N seconds on
the 10k estate; the lag of every write (ZooKeeper's ack -> the istiod-like client holds it)
and whether the client's final view equals ZooKeeper's exactly (endpoint sets per host).

Beside it, on the same writes: a kazoo watcher with a children watch on every providers node
that re-lists a node when its watch fires (bench/zkwatcher.py); its lag is the time from the
ack until its listing holds the write.

Three processes besides the server and ZooKeeper, so that none is timed by another's work:
the writer (bench/zkwriter.py, which holds the rate and stamps acks), the watcher, and this
one, whose probe logs every address that appears or disappears in the client's view. Each
write is matched afterwards to the first appearance (an addition: an address never used
before) or disappearance (a removal: one of the estate's own providers, removed at most
once) in each log, so "holds it" is exact. Writes not held by the deadline count as the
time waited (censored). The estate is restored afterwards.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from typing import Any
from urllib.parse import quote

from bench.context import Bench
from bench.process import cpu_seconds
from bench.serving import zookeeper_serving
from bench.stats import cdf_points, summary
from bench.workload import Estate, provider_url, providers_path, zk_endpoints, zk_host
from bench.zk import read_endpoints, settle

Event = tuple[float, str, str, int]


def first_seen(events: list[Event]) -> dict[tuple[str, str, int], float]:
    """(host, address, +1/-1) -> when it first happened."""
    seen: dict[tuple[str, str, int], float] = {}
    for at, host, address, sign in events:
        seen.setdefault((host, address, sign), at)
    return seen


async def restore(bench: Bench, root: str, estate: Estate) -> None:
    """Put the estate back as it was written."""
    writer = bench.zookeeper.admin
    current = await read_endpoints(writer, root)
    index = {zk_host(i): i for i in range(estate.services)}
    pending = []
    for host, wanted in zk_endpoints(estate).items():
        have = current.get(host, frozenset())
        path = providers_path(root, index[host])
        for extra in have - wanted:
            child = quote(provider_url(index[host], extra), safe="")
            pending.append(settle(writer.delete_async(f"{path}/{child}")))
        for missing in wanted - have:
            child = quote(provider_url(index[host], missing), safe="")
            pending.append(settle(writer.create_async(f"{path}/{child}")))
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)


async def churn_once(bench: Bench, debounce: str) -> dict[str, Any]:
    config = bench.config
    estate = Estate(config.scale, config.instances)
    serving = await zookeeper_serving(bench, estate, debounce)
    zk = bench.zookeeper
    directory = bench.scratch(f"churn-{debounce}")
    common = ["--hosts", zk.address, "--root", serving.root, "--services", str(estate.services)]
    deadline = max(30.0, 4 * config.churn_seconds)
    watcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.zkwatcher", *common, "--within", str(deadline),
        "--out", str(directory / "watcher.json"),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert watcher.stdin is not None
    assert watcher.stdout is not None
    view = serving.view
    try:
        async with asyncio.timeout(config.deadline):
            ready = await watcher.stdout.readline()
        if b"ready" not in ready:
            raise RuntimeError(f"watcher did not start (status {await watcher.wait()})")
        rate, seconds = config.churn_rate, config.churn_seconds
        bench.log(f"churn (debounce {debounce}): {rate:.0f}/s for {seconds:.0f}s")
        events: list[Event] = []
        view.events = events
        server_cpu, watcher_cpu = serving.server.cpu(), cpu_seconds(watcher.pid)
        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.zkwriter", *common, "--instances", str(estate.instances),
            "--rate", str(rate), "--seconds", str(seconds), "--out", str(directory / "ops.json"),
        )  # fmt: skip
        async with asyncio.timeout(seconds + config.deadline):
            if await writer.wait() != 0:
                raise RuntimeError("the churn writer failed")
        written = json.loads((directory / "ops.json").read_text())
        ops: list[list[Any]] = written["ops"]
        expected = await read_endpoints(zk.admin, serving.root)
        last_ack = max(op[4] for op in ops)
        try:
            converged = await serving.probe.until(lambda: view.endpoints == expected, deadline)
            equal = True
        except TimeoutError:
            converged, equal = math.nan, view.endpoints == expected
        gave_up = time.perf_counter()
        # CPU per write does not depend on what else the machine runs (the lags do): the
        # server's from the first write until it held the last, the watcher's until then too
        server_cpu = serving.server.cpu() - server_cpu
        watcher_cpu = cpu_seconds(watcher.pid) - watcher_cpu
        mismatched = sum(
            1
            for h in expected.keys() | view.endpoints.keys()
            if expected.get(h) != view.endpoints.get(h)
        )
        watcher.stdin.write(b"stop\n")
        await watcher.stdin.drain()
        async with asyncio.timeout(deadline + 30):
            await watcher.wait()
        watched = json.loads((directory / "watcher.json").read_text())
    finally:
        view.events = None
        if watcher.returncode is None:
            watcher.kill()
            await watcher.wait()
    await restore(bench, serving.root, estate)
    ours = first_seen(events)
    kazoo = first_seen([(e[0], e[1], e[2], e[3]) for e in watched["events"]])
    lags: dict[str, list[float]] = {"ours": [], "kazoo_watch": []}
    censored: dict[str, list[float]] = {"ours": [], "kazoo_watch": []}
    for kind, service, address, _issued, acked, _error in ops:
        key = (zk_host(service), address, 1 if kind == "add" else -1)
        for name, seen in (("ours", ours), ("kazoo_watch", kazoo)):
            if key in seen:
                lags[name].append(seen[key] - acked)
            else:
                censored[name].append(gave_up - acked)
    first = min(op[3] for op in ops)
    step = max(1, len(ops) // 1500)
    lag = summary(lags["ours"], censored["ours"])
    result: dict[str, Any] = {
        "debounce": debounce,
        "services": estate.services,
        "rate_target": config.churn_rate,
        "rate_achieved": len(ops) / written["took"],
        "seconds": written["took"],
        "writes": len(ops),
        "additions": sum(1 for op in ops if op[0] == "add"),
        "removals": sum(1 for op in ops if op[0] == "remove"),
        "write_errors": sum(1 for op in ops if op[5]),
        "lag": {
            "ours": lag,
            "kazoo_watch": summary(lags["kazoo_watch"], censored["kazoo_watch"]),
        },
        "cpu_ms_per_write": {
            "ours": 1000 * server_cpu / len(ops),
            "kazoo_watch": 1000 * watcher_cpu / len(ops),
        },
        "final_equal": equal,
        "final_mismatched_hosts": mismatched,
        "converged_after_last_ack_s": converged - last_ack,
        "watcher_caught_up": watched["caught_up"],
        "cdf": {
            "ours": cdf_points(lags["ours"] + censored["ours"]),
            "kazoo_watch": cdf_points(lags["kazoo_watch"] + censored["kazoo_watch"]),
        },
        "timeline": [
            [
                op[3] - first,
                ours.get((zk_host(op[1]), op[2], 1 if op[0] == "add" else -1), gave_up) - op[4],
            ]
            for op in ops[::step]
        ],
        "target": {
            "rule": "lag p99 < 1 s and the final view equals ZooKeeper's",
            "met": bool(lag["p99"] < 1.0 and equal),
        },
    }
    bench.log(
        f"churn (debounce {debounce}): lag p50 {lag['p50']:.3f}s p99 {lag['p99']:.3f}s, "
        f"final equal {equal}, kazoo p99 {result['lag']['kazoo_watch']['p99']:.3f}s; CPU per "
        f"write {result['cpu_ms_per_write']['ours']:.2f} ms "
        f"(kazoo watcher {result['cpu_ms_per_write']['kazoo_watch']:.2f} ms)"
    )
    return result


async def run(bench: Bench) -> dict[str, Any]:
    result: dict[str, Any] = {
        "what": "provider adds/removes at a fixed rate; lag = ZooKeeper ack -> the client "
        "holds the write; final view compared with ZooKeeper's, endpoint set per host",
        "baseline": "a kazoo watcher on every providers node (children watch, re-listed when "
        "it fires), in its own process: ack -> its listing holds the same write",
        "runs": {},
    }
    for debounce in bench.config.churn_debounces:
        result["runs"][debounce] = await churn_once(bench, debounce)
    return result
