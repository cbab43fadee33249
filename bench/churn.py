"""Part (c), churn: provider additions and removals at a fixed rate (1,000/s) for N seconds on
the 10k estate; the lag of every write (its write call -> the istiod-like client holds it)
and whether the client's final view equals ZooKeeper's exactly (endpoint sets per host).

The baseline: a kazoo watcher with a children watch on every providers node that re-lists a
node when its watch fires (bench/zkwatcher.py); its lag is the time from the write call until
its listing holds the write. It follows a pass of its own, the same churn with no server running:
on 2 cores, run beside the server it took as much CPU as the server did and slowed both.

Each pass has its processes besides ZooKeeper, so that none is timed by another's work: the
writer (bench/zkwriter.py, which holds the rate and stamps acks), and either the server plus
this one, whose probe logs every address that appears or disappears in the client's view, or
the watcher. Each
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.context import Bench
from bench.serving import zookeeper_serving
from bench.stats import cdf_points, summary
from bench.workload import Estate, provider_url, providers_path, zk_endpoints, zk_host
from bench.zk import read_endpoints, read_endpoints_aside, settle

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


@dataclass
class Pass:
    """One churn: the writes (kind, service, address, issued, acked, error), who saw what
    (time, host, address, +1/-1), and what the watching side cost."""

    ops: list[list[Any]]
    took: float
    seen: dict[tuple[str, str, int], float]
    gave_up: float  # when a write not seen by then counts as seen then (censored)
    cpu: float  # CPU seconds of the watching side, from the first write until it held all
    equal: bool  # its final view equals ZooKeeper's
    mismatched: int
    converged_after_last_ack: float
    caught_up: bool


async def write(
    bench: Bench,
    root: str,
    estate: Estate,
    directory: Path,
    seconds: float | None = None,
    pattern: str = "uniform",
    rate: float | None = None,
) -> Any:
    """Run the writer (its own process: it holds the rate and stamps the acks) for
    `seconds` at `rate` (defaults: config.churn_seconds, config.churn_rate), in `pattern`
    (bench/zkwriter.py)."""
    config = bench.config
    seconds = config.churn_seconds if seconds is None else seconds
    rate = config.churn_rate if rate is None else rate
    common = ["--hosts", bench.zookeeper.address, "--root", root]
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.zkwriter", *common, "--services", str(estate.services),
        "--instances", str(estate.instances), "--rate", str(rate),
        "--seconds", str(seconds), "--out", str(directory / "ops.json"),
        "--pattern", pattern, "--rolling-services", str(config.rolling_services),
    )  # fmt: skip
    async with asyncio.timeout(seconds + config.deadline):
        if await writer.wait() != 0:
            raise RuntimeError("the churn writer failed")
    return json.loads((directory / "ops.json").read_text())


async def serve_pass(bench: Bench, debounce: str) -> Pass:
    """The server under churn, and nothing else watching: the probe logs every address
    that appears or disappears in the client's view."""
    config = bench.config
    estate = Estate(config.scale, config.instances)
    serving = await zookeeper_serving(bench, estate, debounce)
    directory = bench.scratch(f"churn-{debounce}")
    deadline = max(30.0, 4 * config.churn_seconds)
    view = serving.view
    events: list[Event] = []
    bench.log(f"churn (debounce {debounce}): {config.churn_rate:.0f}/s for "
              f"{config.churn_seconds:.0f}s")  # fmt: skip
    view.events = events
    try:
        server_cpu = serving.server.cpu()
        written = await write(bench, serving.root, estate, directory)
        ops: list[list[Any]] = written["ops"]
        expected = await read_endpoints_aside(bench.zookeeper.admin, serving.root)
        last_ack = max(op[4] if op[4] is not None else op[3] for op in ops)
        try:
            converged = await serving.probe.until(lambda: view.endpoints == expected, deadline)
            equal = True
        except TimeoutError:
            converged, equal = math.nan, view.endpoints == expected
        gave_up = time.perf_counter()
        server_cpu = serving.server.cpu() - server_cpu
        mismatched = sum(
            1
            for h in expected.keys() | view.endpoints.keys()
            if expected.get(h) != view.endpoints.get(h)
        )
    finally:
        view.events = None
    await restore(bench, serving.root, estate)
    return Pass(
        ops, written["took"], first_seen(events), gave_up, server_cpu, equal, mismatched,
        converged - last_ack, equal,
    )  # fmt: skip


async def baseline_pass(bench: Bench) -> Pass:
    """The same churn with no server running: only a bare kazoo watcher follows it, in its
    own process (bench/zkwatcher.py). Its own pass, so that neither is slowed by the other
    on a 2-core machine."""
    config = bench.config
    estate = Estate(config.scale, config.instances)
    await bench.close_servings(estate.services)
    root = await bench.zookeeper.estate(estate)
    directory = bench.scratch("churn-baseline")
    deadline = max(30.0, 4 * config.churn_seconds)
    common = ["--hosts", bench.zookeeper.address, "--root", root]
    watcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.zkwatcher", *common, "--services", str(estate.services),
        "--within", str(deadline), "--out", str(directory / "watcher.json"),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert watcher.stdin is not None
    assert watcher.stdout is not None
    try:
        async with asyncio.timeout(config.deadline):
            ready = await watcher.stdout.readline()
        if b"ready" not in ready:
            raise RuntimeError(f"watcher did not start (status {await watcher.wait()})")
        bench.log(f"churn (baseline kazoo watcher): {config.churn_rate:.0f}/s for "
                  f"{config.churn_seconds:.0f}s")  # fmt: skip
        written = await write(bench, root, estate, directory)
        ops: list[list[Any]] = written["ops"]
        watcher.stdin.write(b"stop\n")
        await watcher.stdin.drain()
        async with asyncio.timeout(deadline + 30):
            # it exits once its listings equal ZooKeeper's (or it gives up)
            await watcher.wait()
        watched = json.loads((directory / "watcher.json").read_text())
    finally:
        if watcher.returncode is None:
            watcher.kill()
            await watcher.wait()
    await restore(bench, root, estate)
    seen = first_seen([(e[0], e[1], e[2], e[3]) for e in watched["events"]])
    caught_up = bool(watched["caught_up"])
    return Pass(
        ops, written["took"], seen, watched["at"], watched["cpu"], caught_up, 0, math.nan,
        caught_up,
    )  # fmt: skip


def lags(run: Pass) -> tuple[list[float], list[float]]:
    """Each write's lag (write call -> seen), and the waits of those never seen
    (censored)."""
    return lags_of(run.ops, run.seen, run.gave_up)


def lags_of(
    ops: list[list[Any]], seen: dict[tuple[str, str, int], float], gave_up: float
) -> tuple[list[float], list[float]]:
    """Each write's lag (its write call -> first seen after), and the waits of those never
    seen by `gave_up` (censored). From the write call, not the ack: ZooKeeper sends watch
    events before the writer's reply, so on a loaded machine the writer's thread can stamp
    the ack after the watcher already has the write (a negative lag); the call comes first
    by construction. The writes' own round trips are reported beside (`write_rtt`)."""
    found: list[float] = []
    censored: list[float] = []
    for kind, service, address, issued, _acked, _error in ops:
        at = seen.get((zk_host(service), address, 1 if kind == "add" else -1))
        if at is None:
            censored.append(gave_up - issued)
        else:
            found.append(at - issued)
    return found, censored


def round_trips(ops: list[list[Any]]) -> dict[str, float]:
    """The writes' own call -> ack times (a write never acked is missing)."""
    return summary([op[4] - op[3] if op[4] is not None else None for op in ops])


def report(debounce: str, ours: Pass, base: Pass, services: int, rate: float) -> dict[str, Any]:
    ops = ours.ops
    first = min(op[3] for op in ops)
    step = max(1, len(ops) // 1500)
    ours_lags, ours_censored = lags(ours)
    base_lags, base_censored = lags(base)
    lag = summary(ours_lags, ours_censored)
    return {
        "debounce": debounce,
        "services": services,
        "rate_target": rate,
        "rate_achieved": len(ops) / ours.took,
        "seconds": ours.took,
        "writes": len(ops),
        "additions": sum(1 for op in ops if op[0] == "add"),
        "removals": sum(1 for op in ops if op[0] == "remove"),
        "write_errors": sum(1 for op in ops if op[5]),
        "lag": {"ours": lag, "kazoo_watch": summary(base_lags, base_censored)},
        "lag_from": "the write call",
        "write_rtt": {"ours": round_trips(ops), "kazoo_watch": round_trips(base.ops)},
        "cpu_ms_per_write": {
            "ours": 1000 * ours.cpu / len(ops),
            "kazoo_watch": 1000 * base.cpu / len(base.ops),
        },
        "baseline_rate_achieved": len(base.ops) / base.took,
        "final_equal": ours.equal,
        "final_mismatched_hosts": ours.mismatched,
        "converged_after_last_ack_s": ours.converged_after_last_ack,
        "watcher_caught_up": base.caught_up,
        "cdf": {
            "ours": cdf_points(ours_lags + ours_censored),
            "kazoo_watch": cdf_points(base_lags + base_censored),
        },
        "timeline": [
            [
                op[3] - first,
                ours.seen.get((zk_host(op[1]), op[2], 1 if op[0] == "add" else -1), ours.gave_up)
                - op[3],
            ]
            for op in ops[::step]
        ],
        "target": {
            "rule": "lag p99 < 1 s and the final view equals ZooKeeper's",
            "met": bool(lag["p99"] < 1.0 and ours.equal),
        },
    }


async def run(bench: Bench) -> dict[str, Any]:
    result: dict[str, Any] = {
        "what": "provider adds/removes at a fixed rate; lag = the write call -> the client "
        "holds the write; final view compared with ZooKeeper's, endpoint set per host",
        "baseline": "a kazoo watcher on every providers node (children watch, re-listed when "
        "it fires), in its own process, on its own pass of the same churn with no server "
        "running: the write call -> its listing holds the write",
        "runs": {},
    }
    config = bench.config
    passes = {debounce: await serve_pass(bench, debounce) for debounce in config.churn_debounces}
    base = await baseline_pass(bench)
    for debounce, ours in passes.items():
        run = report(debounce, ours, base, config.scale, config.churn_rate)
        result["runs"][debounce] = run
        lag, kazoo = run["lag"]["ours"], run["lag"]["kazoo_watch"]
        cpu = run["cpu_ms_per_write"]
        bench.log(
            f"churn (debounce {debounce}): lag p50 {lag['p50']:.3f}s p99 {lag['p99']:.3f}s, "
            f"final equal {run['final_equal']}, kazoo p99 {kazoo['p99']:.3f}s; CPU per "
            f"write {cpu['ours']:.2f} ms (kazoo watcher {cpu['kazoo_watch']:.2f} ms)"
        )
    return result
