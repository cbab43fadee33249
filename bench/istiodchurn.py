"""Part (c) with the real istiod consuming (issue 23): ZooKeeper churn at 1,000 writes/s for
60 s, mcpserver serving the set whole (N = 1) or cut into N shards, the unmodified istiod
reading it (one `configSources` entry per shard, then `k8s://`) and a sidecar reading
istiod's xDS (bench/sidecar.py). Reported per shard count and churn pattern:

- istiod's CPU seconds per second while the writes go on (from the first write to the
  last ack), and to the moment the sidecar holds the final state (all the work the churn
  caused, per second of churn); mcpserver's beside it.
- the lag of every write from its write call to the sidecar's endpoints showing it (issue
  23's end-to-end: "a registry write to a sidecar's endpoints from the real istiod"), and
  whether the sidecar's final endpoints equal ZooKeeper's tree.
- what explains the CPU: istiod's own counters over the pass (pilot_inbound_updates,
  pilot_xds_pushes, pilot_k8s_cfg_events, ...), its Go collections (GODEBUG=gctrace=1), and
  mcpserver's: snapshots built and ServiceEntry responses per shard, hence how many shards
  a rebuild changed on average. With `istiod_profile_seconds`, a CPU profile of istiod taken
  during the churn and its top functions (`go tool pprof -top`).

Patterns (bench/zkwriter.py): `uniform` spreads the writes over every service; `rolling` is
a rolling restart, a few services at a time replacing their instances one by one.

Each pass has a server (default debounce, as deployed), an istiod and a sidecar of its own,
started for it; the server is the only one watching the estate while it runs. The shard
counts compared take the same churn back to back, in alternating order. The estate is
restored after each pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.churn import first_seen, lags_of, restore, write
from bench.context import Bench
from bench.istiodcost import WINDOW, collections_in, gc_traced, profile_top, shares, spread
from bench.process import (
    ServerProcess,
    bench_settings,
    cpu_seconds,
    machine_cpu,
    quiet,
    status_kib,
)
from bench.scrape import Samples, scrape
from bench.sidecar import Sidecar
from bench.stats import cdf_points, summary
from bench.workload import Estate, zk_endpoints, zk_host
from bench.zk import read_endpoints_aside
from testbed.istiod import Istiod
from testbed.kube import ControlPlane

ISSUE_RATE = 1_000.0
"""Writes per second of issue 23's churn targets."""
SAMPLE_EVERY = 0.25  # seconds between CPU readings of istiod and mcpserver
ISTIOD_FAMILIES = (
    "pilot_inbound_updates",
    "pilot_xds_pushes",
    "pilot_push_triggers",
    "pilot_k8s_cfg_events",
    "pilot_proxy_convergence_time",
    "pilot_debounce_time",
    "pilot_pushcontext_init_seconds",
    "pilot_xds_push_time",
)
"""istiod's metric families whose change over a pass is reported (counters, and the _sum and
_count of histograms)."""


@dataclass
class Reading:
    """CPU seconds so far of each process of a pass, and of the whole machine."""

    at: float
    istiod: float
    server: float
    zookeeper: float
    suite: float  # this process: the sidecar, the sampler
    machine: float  # every process's, everyone's (/proc/stat)


@dataclass
class Layout:
    """One shard count's running server, istiod and sidecar."""

    shards: int
    estate: Estate
    root: str
    server: ServerProcess
    istiod: Istiod
    sidecar: Sidecar
    hosts: frozenset[str]
    facts: dict[str, Any] = field(default_factory=dict)

    def held(self) -> dict[str, frozenset[str]]:
        """The sidecar's endpoints of the estate's hosts."""
        return {h: a for h, a in self.sidecar.view.endpoints.items() if h in self.hosts}


def at_time(readings: list[Reading], at: float, who: str) -> float:
    """A process's CPU seconds at `at`, interpolated between the readings around it."""
    before = [r for r in readings if r.at <= at]
    after = [r for r in readings if r.at >= at]
    if not before:
        return float(getattr(readings[0], who))
    if not after:
        return float(getattr(readings[-1], who))
    low, high = before[-1], after[0]
    if high.at == low.at:
        return float(getattr(low, who))
    share = (at - low.at) / (high.at - low.at)
    return float(getattr(low, who) + share * (getattr(high, who) - getattr(low, who)))


def rate_timeline(readings: list[Reading], start: float) -> list[list[float]]:
    """[[seconds since start, istiod CPU/s, mcpserver CPU/s, machine busy CPU/s], ...] per
    1 s."""
    out: list[list[float]] = []
    step = max(1, round(1.0 / SAMPLE_EVERY))
    for a, b in zip(readings[::step], readings[step::step], strict=False):
        span = b.at - a.at
        if span > 0:
            out.append(
                [
                    a.at - start,
                    (b.istiod - a.istiod) / span,
                    (b.server - a.server) / span,
                    (b.machine - a.machine) / span,
                ]
            )
    return out


def changes(after: Samples, before: Samples, families: tuple[str, ...]) -> dict[str, float]:
    """What counters (and histogram sums and counts) of these families counted between two
    scrapes, as `name{label=value,...}` -> amount; zeros left out."""
    out: dict[str, float] = {}
    for key, value in after.items():
        name, labels = key
        if not name.startswith(families) or not name.endswith(("_total", "_sum", "_count")):
            continue
        amount = value - before.get(key, 0.0)
        if amount:
            text = ",".join(f"{k}={v}" for k, v in sorted(labels))
            out[f"{name}{{{text}}}"] = amount
    return out


def entry_responses(after: Samples, before: Samples) -> dict[str, float]:
    """ServiceEntry responses mcpserver sent per shard label between two scrapes."""
    out: dict[str, float] = {}
    for (name, labels), value in after.items():
        found = dict(labels)
        if name == "mcpserver_xds_responses_total" and found.get("type_url", "").endswith(
            "/ServiceEntry"
        ):
            amount = value - before.get((name, labels), 0.0)
            if amount:
                out[found["shard"]] = out.get(found["shard"], 0.0) + amount
    return out


async def profile(istiod: Istiod, delay: float, seconds: float, path: Path) -> list[str]:
    """A CPU profile of istiod `seconds` long, starting `delay` seconds from now."""
    await asyncio.sleep(delay)
    url = f"http://127.0.0.1:{istiod.monitoring_port}/debug/pprof/profile?seconds={seconds:g}"

    def fetch() -> list[str]:
        with urllib.request.urlopen(url, timeout=seconds + 60) as response:
            path.write_bytes(response.read())
        return profile_top(path)

    return await asyncio.to_thread(fetch)


async def sample(
    readings: list[Reading], layout: Layout, zookeeper: int, stop: asyncio.Event
) -> None:
    assert layout.istiod.process is not None
    istiod, server = layout.istiod.process.pid, layout.server.pid

    def read() -> Reading:
        return Reading(
            time.perf_counter(),
            cpu_seconds(istiod),
            cpu_seconds(server),
            cpu_seconds(zookeeper),
            time.process_time(),
            machine_cpu()[0],
        )

    while True:
        readings.append(read())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
        if stop.is_set():
            readings.append(read())
            return


async def start_layout(
    bench: Bench, binary: Path, plane: ControlPlane, estate: Estate, shards: int
) -> Layout:
    """mcpserver with `shards`, an istiod reading it, a sidecar on the istiod: all holding
    the estate."""
    config = bench.config
    await bench.close_servings(estate.services)  # a kept server would take every write too
    root = await bench.zookeeper.estate(estate)
    directory = bench.scratch(f"istiod-churn-{estate.services}-{shards}-shards")
    registry = bench.zookeeper.registry(root)
    server = ServerProcess(directory, bench_settings(directory, [registry], None, shards))
    server.start()
    istiod: Istiod | None = None
    sidecar: Sidecar | None = None
    try:

        async def ready() -> None:
            while True:  # /readyz: nothing but polling says when the first snapshot is served
                if await asyncio.to_thread(server.ready):
                    return
                await asyncio.sleep(0.2)

        async with asyncio.timeout(config.deadline):
            await server.running(ready())
        server_ready = time.perf_counter() - server.spawned_at
        sources = [{"address": f"xds://127.0.0.1:{p}"} for p in server.shard_ports(shards)]
        istiod = Istiod(
            binary,
            directory / "istiod",
            server.port,
            kubeconfig=plane.istiod_kubeconfig(),
            sources=[*sources, {"address": "k8s://"}],
        )
        istiod.workdir.mkdir()
        with gc_traced():
            await asyncio.to_thread(istiod.start_ready)
        assert istiod.process is not None
        sidecar = Sidecar(istiod.grpc_port)
        hosts = frozenset(zk_host(i) for i in range(estate.services))
        layout = Layout(shards, estate, root, server, istiod, sidecar, hosts)
        expected = zk_endpoints(estate)
        sidecar.start()
        started = time.perf_counter()
        await sidecar.until(lambda: layout.held() == expected, config.deadline)
        layout.facts = {
            "server_ready_seconds": server_ready,
            "istiod_ready_seconds": istiod.ready_seconds,
            "sidecar_full_seconds": time.perf_counter() - started,
            "sidecar_clusters": sidecar.clusters,
            "istiod_startup_cpu_seconds": cpu_seconds(istiod.process.pid),
        }
        bench.log(
            f"istiod churn: {estate.services} services, {shards} shard(s): server ready after "
            f"{server_ready:.1f}s, istiod after {istiod.ready_seconds:.1f}s, the sidecar holds "
            f"{sidecar.clusters} clusters"
        )
        return layout
    except BaseException:
        if sidecar is not None:
            await sidecar.stop()
        if istiod is not None:
            await asyncio.to_thread(istiod.kill)
        server.stop()
        raise


async def stop_layout(layout: Layout) -> None:
    await layout.sidecar.stop()
    await asyncio.to_thread(layout.istiod.kill)
    layout.server.stop()


def run_key(pattern: str, rate: float) -> str:
    """How a pass is named in the results: `uniform@1000` (writes per second)."""
    return f"{pattern}@{rate:g}"


async def churn_pass(bench: Bench, layout: Layout, pattern: str, rate: float) -> dict[str, Any]:
    """One churn against a running layout (which it leaves with the churned estate)."""
    config = bench.config
    istiod = layout.istiod
    assert istiod.process is not None
    zookeeper = bench.zookeeper.server
    assert zookeeper is not None
    assert zookeeper.process is not None
    sidecar = layout.sidecar
    seconds = config.istiod_churn_seconds
    deadline = max(60.0, 4 * seconds)
    await quiet(istiod.process.pid, 0.05, config.deadline)
    name = f"istiod-churn-{layout.estate.services}-{layout.shards}-{pattern}-{rate:g}"
    directory = bench.scratch(name)
    istiod_url = f"http://127.0.0.1:{istiod.monitoring_port}/metrics"
    events: list[tuple[float, str, str, int]] = []
    sidecar.view.events = events
    readings: list[Reading] = []
    stop = asyncio.Event()
    load_start = os.getloadavg()
    istiod_before, server_before = scrape(istiod_url), layout.server.metrics()
    gcs_before = collections_in(istiod.log())
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    sampler = asyncio.create_task(sample(readings, layout, zookeeper.process.pid, stop))
    profiling: asyncio.Task[list[str]] | None = None
    if config.istiod_profile_seconds > 0:
        delay = max(0.0, (seconds - config.istiod_profile_seconds) / 2)
        at = directory / "istiod.cpu.pprof"
        profiling = asyncio.create_task(profile(istiod, delay, config.istiod_profile_seconds, at))
    bench.log(f"istiod churn ({layout.shards} shard(s), {pattern}): {rate:g}/s for {seconds:g}s")
    try:
        written = await write(bench, layout.root, layout.estate, directory, seconds, pattern, rate)
        after_writer = resource.getrusage(resource.RUSAGE_CHILDREN)
        ops: list[list[Any]] = written["ops"]
        expected = await read_endpoints_aside(bench.zookeeper.admin, layout.root)
        try:
            converged = await sidecar.until(lambda: layout.held() == expected, deadline)
            equal = True
        except TimeoutError:
            converged, equal = math.nan, layout.held() == expected
        gave_up = time.perf_counter()
        held = layout.held()
        mismatched = sum(1 for h in expected.keys() | held.keys() if expected.get(h) != held.get(h))
    finally:
        sidecar.view.events = None
        stop.set()
        await sampler
    top = await profiling if profiling is not None else []
    istiod_after, server_after = scrape(istiod_url), layout.server.metrics()
    peaks = {
        "istiod": status_kib(istiod.process.pid, "VmHWM") / 1024,
        "server": status_kib(layout.server.pid, "VmHWM") / 1024,
    }
    load_end = os.getloadavg()
    gcs = {n: ms for n, ms in collections_in(istiod.log()).items() if n not in gcs_before}

    first: float = min(op[3] for op in ops)
    last_ack: float = max(op[4] if op[4] is not None else op[3] for op in ops)
    span = last_ack - first
    end = gave_up if math.isnan(converged) else converged

    def per_second(who: str, stop_at: float = last_ack) -> float:
        """CPU seconds per second of churn, from the first write to `stop_at`."""
        return (at_time(readings, stop_at, who) - at_time(readings, first, who)) / span

    writer_cpu = (after_writer.ru_utime + after_writer.ru_stime) - (
        children.ru_utime + children.ru_stime
    )
    found, censored = lags_of(ops, first_seen(events), gave_up)
    lag = summary(found, censored)
    responses = entry_responses(server_after, server_before)
    builds = server_after.get(("mcpserver_snapshot_builds_total", frozenset()), 0.0) - (
        server_before.get(("mcpserver_snapshot_builds_total", frozenset()), 0.0)
    )
    step = max(1, len(ops) // 300)  # the lag over time, thinned for the results file
    seen = first_seen(events)
    cores = os.cpu_count() or 1
    result: dict[str, Any] = {
        "pattern": pattern,
        "shards": layout.shards,
        "services": layout.estate.services,
        "rate_target": rate,
        "rate_achieved": len(ops) / written["took"],
        "seconds": written["took"],
        "writes": len(ops),
        "write_errors": sum(1 for op in ops if op[5]),
        "lag": lag,
        "final_equal": equal,
        "final_mismatched_hosts": mismatched,
        "converged_after_last_ack_s": end - last_ack,
        "istiod_cpu_per_second": per_second("istiod"),
        "istiod_cpu_per_churn_second_to_converged": per_second("istiod", end),
        "server_cpu_per_second": per_second("server"),
        "server_cpu_per_churn_second_to_converged": per_second("server", end),
        "zookeeper_cpu_per_second": per_second("zookeeper"),
        "writer_cpu_per_second": writer_cpu / span,
        "suite_cpu_per_second": per_second("suite"),
        "machine_busy_share": per_second("machine") / cores,
        "peak_rss_mib": peaks,
        "istiod_go_collections": len(gcs),
        "istiod_go_collection_cpu_seconds": sum(gcs.values()) / 1e3,
        "istiod_metrics": changes(istiod_after, istiod_before, ISTIOD_FAMILIES),
        "server_snapshots": builds,
        "server_entry_responses_by_shard": responses,
        # a response per changed shard, unless istiod was still reading the last one
        # (then the stream sends the newest set once it can: fewer responses)
        "responses_per_snapshot": sum(responses.values()) / builds if builds else 0.0,
        "writes_spread": spread(ops, layout.shards),
        "sidecar_cla_updates": sidecar.cla_updates,
        "load_average": {"start": list(load_start), "end": list(load_end)},
        "cdf": cdf_points(found + censored),
        "timeline": [
            [
                op[3] - first,
                seen.get((zk_host(op[1]), op[2], 1 if op[0] == "add" else -1), gave_up) - op[3],
            ]
            for op in ops[::step]
        ],
        "cpu_timeline": rate_timeline(readings, first),
    }
    if top:
        result["istiod_profile_top"] = top
        result["istiod_profile_shares"] = shares(top)
    bench.log(
        f"istiod churn ({layout.shards} shard(s), {pattern}, {rate:g}/s): istiod "
        f"{result['istiod_cpu_per_second']:.2f} CPU-s/s, mcpserver "
        f"{result['server_cpu_per_second']:.2f}, machine busy "
        f"{result['machine_busy_share']:.0%}; sidecar lag p50 {lag['p50']:.3f}s p99 "
        f"{lag['p99']:.3f}s; final equal {equal}; {result['responses_per_snapshot']:.1f} "
        f"responses per snapshot, {result['writes_spread']['shards_per_window']:.1f} shards "
        f"written per {WINDOW:g}s; load {load_end[0]:.1f}"
    )
    return result


async def run(bench: Bench) -> dict[str, Any]:
    config = bench.config
    kit = await bench.istiod()
    result: dict[str, Any] = {
        "what": "ZooKeeper churn with the real istiod consuming: istiod CPU-seconds per second "
        "and the lag from the write call to a sidecar's endpoints (istiod's xDS), per "
        "shard count and churn pattern",
        "baseline": "N = 1 (istiod reading the whole set as one source), same churn, same run",
        "scales": {},
    }
    shards_of = list(config.istiod_churn_shards)
    for scale in config.istiod_churn_scales:
        estate = Estate(scale, config.instances)
        layouts: dict[str, Any] = {str(n): {"starts": [], "patterns": {}} for n in shards_of}
        # each churn is measured for every shard count back to back, in alternating order
        # (1, 16, then 16, 1, ...): what the rest of the machine does drifts over minutes,
        # and the figures compared should see the same of it
        runs = [(p, r) for r in config.istiod_churn_rates for p in config.churn_patterns]
        for i, (pattern, rate) in enumerate(runs):
            for shards in shards_of if i % 2 == 0 else shards_of[::-1]:
                layout = await start_layout(bench, kit.binary, kit.plane, estate, shards)
                try:
                    measured = await churn_pass(bench, layout, pattern, rate)
                finally:
                    await stop_layout(layout)
                    await restore(bench, layout.root, estate)  # nobody watching: quick
                layouts[str(shards)]["starts"].append(layout.facts)
                layouts[str(shards)]["patterns"][run_key(pattern, rate)] = measured
        entry: dict[str, Any] = {"layouts": layouts, "targets": targets(layouts)}
        result["scales"][str(scale)] = entry
    return result


def targets(layouts: dict[str, Any]) -> dict[str, Any]:
    """Issue 23's churn targets, per pass of the most shards: istiod CPU/s <= 1/4 of N = 1's
    and end to end p99 < 1 s. They are set at ISSUE_RATE; a pass at another rate (a
    diagnostic) is reported with `met` None."""
    found: dict[str, Any] = {}
    most = max(layouts, key=int)
    for key, sharded in layouts[most]["patterns"].items():
        issue = sharded["rate_target"] == ISSUE_RATE
        goal: dict[str, Any] = {
            "end_to_end": {
                "rule": f"sidecar lag p99 < 1 s with {most} shards",
                "p99": sharded["lag"]["p99"],
                "met": bool(sharded["lag"]["p99"] < 1.0 and sharded["final_equal"])
                if issue
                else None,
            }
        }
        one = layouts.get("1", {}).get("patterns", {}).get(key)
        if one is not None and most != "1":
            ratio = sharded["istiod_cpu_per_second"] / one["istiod_cpu_per_second"]
            goal["cpu"] = {
                "rule": f"istiod CPU/s with {most} shards <= 1/4 of N = 1",
                "ratio": ratio,
                "met": ratio <= 0.25 if issue else None,
            }
        found[key] = goal
    return found
