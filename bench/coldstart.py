"""Part (a), cold start, and part (e), peak memory: from `mcpserver serve` being spawned to
an istiod-like client holding the full set, at each scale, for the static registry (the
estate as YAML, and as JSON) and for ZooKeeper; beside the least work that gets the same
set onto the wire (bench/bare.py) run the same way, in a fresh process from spawn to exit.

Both sides are separate processes, so their peak RSS is their own (VmHWM, bench/process.py
says why not ru_maxrss): the server's when the client holds the full set, the baseline's
when it has serialized the set. That is part (e): the same runs, read for memory.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

from bench.context import Bench
from bench.probe import EndpointView, Probe
from bench.process import ServerProcess, bench_settings, run_measured
from bench.workload import Estate, write_static, write_static_json

STATIC_REGISTRY = "files"
ZK_REGISTRY = "zk"
SOURCES: dict[str, tuple[str, str]] = {
    "static": ("static (YAML)", "yaml.CSafeLoader parse + bare build"),
    "static-json": ("static (JSON)", "json.loads + bare build"),
    "zookeeper": ("ZooKeeper", "the fastest ZooKeeper walk tried + bare build"),
}
"""Cold start sources: label, and what their baseline does."""


async def serve_until_full(
    bench: Bench, name: str, registry: dict[str, Any], estate: Estate
) -> dict[str, Any]:
    """Spawn the server, wait until a client holds every service and endpoint; its figures."""
    directory = bench.scratch(name)
    server = ServerProcess(directory, bench_settings(directory, [registry], debounce=None))
    probe = Probe(0)
    view = EndpointView()
    try:
        server.start()
        probe = Probe(server.port)
        probe.listeners.append(view.apply)
        probe.start()

        def full() -> bool:
            return len(view.endpoints) == estate.services and view.count() == estate.endpoints

        try:
            held = await server.running(probe.until(full, bench.config.deadline))
        except TimeoutError:
            raise RuntimeError(
                f"{name}: no full set within {bench.config.deadline}s; the client holds "
                f"{len(view.endpoints)} services; server log:\n{server.log_tail()}"
            ) from None
        assert probe.latest is not None
        figures: dict[str, Any] = {
            "seconds": held - server.spawned_at,
            "peak_rss_mib": server.peak_mib(),
            "cpu_seconds": server.cpu(),
            "response_bytes": len(probe.latest.raw),
            "services": len(view.endpoints),
            "endpoints": view.count(),
        }
    finally:
        await probe.stop()
        server.stop()
    return figures


def baseline(
    kind: str, source: str, root: str, registry: str, within: float, walk: str = ""
) -> dict[str, Any]:
    """One baseline process from spawn to exit; `walk` (ZooKeeper): client:window[:nostat]."""
    command = [sys.executable, "-m", "bench.bare", kind, source, "--root", root]
    if walk:
        client, window, *rest = walk.split(":")
        command += ["--client", client, "--window", window, *(["--no-stat"] if rest else [])]
    elapsed, out = run_measured([*command, "--registry", registry], within)
    phases = json.loads(out)
    figures = {"seconds": elapsed, "peak_rss_mib": phases.pop("peak_rss_mib"), "phases": phases}
    if walk:
        figures["walk"] = walk
    return figures


def compare(ours: dict[str, Any], base: dict[str, Any], lean: dict[str, Any]) -> dict[str, Any]:
    """Ours beside the fastest baseline run (time) and the leanest one (peak RSS)."""
    return {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "ours": ours,
        "baseline": base,
        "baseline_rss": {k: lean[k] for k in ("peak_rss_mib", "walk") if k in lean},
        "ratio": ours["seconds"] / base["seconds"],
        "rss_ratio": ours["peak_rss_mib"] / lean["peak_rss_mib"],
    }


async def run(bench: Bench) -> dict[str, Any]:
    config = bench.config
    result: dict[str, Any] = {
        "what": "spawn of the server -> an istiod-like client holds every service and endpoint",
        "baselines": {
            "static": "spawn -> yaml.CSafeLoader parse of the same file + bare protobuf build "
            "and serialization of the same ServiceEntries -> exit",
            "static-json": "spawn -> json.loads of the same file (the estate as JSON) + the "
            "same bare build -> exit",
            "zookeeper": "spawn -> a walk of the same tree with a window of listings in "
            "flight, each listing built into its ServiceEntry as it arrives and dropped, the "
            "set serialized -> exit; every walk of config.zk_walks (client:window[:nostat]) "
            "tried, and the previous baseline's walk: the fastest kept for time, the leanest "
            "for peak RSS",
            "zookeeper_previous": "the baseline before issue 29, measured once per scale: "
            "spawn -> async kazoo walk with every listing in flight at once, the whole walk "
            "held, then the same bare build -> exit",
        },
        "debounce": "default (100ms/500ms)",
        "instances_per_service": config.instances,
    }
    for source in config.cold_sources:
        per_scale: dict[str, Any] = {}
        for services in config.cold_scales:
            repeats = config.cold_repeats if services <= config.scale else 1
            per_scale[str(services)] = await one_scale(bench, source, services, repeats)
        result[source] = per_scale
    return result


async def one_scale(bench: Bench, source: str, services: int, repeats: int) -> dict[str, Any]:
    """Ours and its baseline, alternately, `repeats` times; the fastest of each is the figure
    (the machine is shared: the minimum is the run least disturbed), all are kept."""
    config = bench.config
    estate = Estate(services, config.instances)
    if source in ("static", "static-json"):
        path = bench.workdir / f"{source}-{services}.{source[7:] or 'yaml'}"
        (write_static_json if source == "static-json" else write_static)(path, estate)
        registry: dict[str, Any] = {
            "kind": "static",
            "name": STATIC_REGISTRY,
            "path": str(path),
            "namespace": "bench",
        }
        command: tuple[str, str, str, str] = (source, str(path), "", STATIC_REGISTRY)
    elif source == "zookeeper":
        root = await bench.zookeeper.estate(estate)
        registry = bench.zookeeper.registry(root, ZK_REGISTRY)
        command = ("zk", bench.zookeeper.address, root, ZK_REGISTRY)
    else:
        raise ValueError(f"unknown cold start source {source!r}; known: {list(SOURCES)}")
    walks = config.zk_walks if source == "zookeeper" else ("",)
    bases, ours = [], []
    for n in range(repeats):
        bases += [baseline(*command, config.deadline, walk) for walk in walks]
        name = f"cold-{source}-{services}-{n}"
        ours.append(await serve_until_full(bench, name, registry, estate))
        best = min(bases[-len(walks) :], key=lambda b: b["seconds"])
        bench.log(
            f"cold {source} {services}: ours {ours[-1]['seconds']:.2f}s "
            f"(RSS {ours[-1]['peak_rss_mib']:.0f} MiB), baseline {best['seconds']:.2f}s "
            f"({best['peak_rss_mib']:.0f} MiB{', ' + best['walk'] if 'walk' in best else ''})"
        )
    previous = None
    if source == "zookeeper":
        previous = baseline("zk-previous", *command[1:], config.deadline)
        previous["walk"] = "previous"  # a candidate too: at small scales it can be the fastest
        bench.log(f"cold {source} {services}: previous baseline {previous['seconds']:.2f}s "
                  f"({previous['peak_rss_mib']:.0f} MiB)")  # fmt: skip
    candidates = bases + ([previous] if previous else [])
    fastest = min(candidates, key=lambda b: b["seconds"])
    leanest = min(candidates, key=lambda b: b["peak_rss_mib"])
    entry = compare(min(ours, key=lambda o: o["seconds"]), fastest, leanest)
    entry["runs"] = {
        "ours": [o["seconds"] for o in ours],
        "baseline": [b["seconds"] for b in candidates],
        # the fastest run's CPU alone says little on a shared machine: every run's, in order
        "ours_cpu_seconds": [o["cpu_seconds"] for o in ours],
        "ours_peak_rss_mib": [o["peak_rss_mib"] for o in ours],
    }
    if previous:
        entry["runs"]["baseline_walks"] = [
            [b["walk"], b["seconds"], b["peak_rss_mib"]] for b in candidates
        ]
        entry["previous_baseline"] = {
            "seconds": previous["seconds"],
            "peak_rss_mib": previous["peak_rss_mib"],
            "ratio": entry["ours"]["seconds"] / previous["seconds"],
            "rss_ratio": entry["ours"]["peak_rss_mib"] / previous["peak_rss_mib"],
        }
    return entry


def memory(cold: dict[str, Any]) -> dict[str, Any]:
    """Part (e) from part (a)'s runs: peak RSS of the server vs the bare build, per scale."""
    out: dict[str, Any] = {
        "what": "peak RSS of the server process (VmHWM when the client holds the full set) "
        "vs the bare build of the same resources in its own process (its VmHWM once the set "
        "is serialized)",
    }
    for source in SOURCES:
        if source not in cold:
            continue
        out[source] = {scale: memory_of(entry) for scale, entry in cold[source].items()}
    return out


def memory_of(entry: dict[str, Any]) -> dict[str, Any]:
    """One scale's peak RSS beside the leanest baseline run (results from before issue 29
    compared with the fastest run's)."""
    lean = entry.get("baseline_rss", entry["baseline"])
    figures = {
        "ours_mib": entry["ours"]["peak_rss_mib"],
        "baseline_mib": lean["peak_rss_mib"],
        "ratio": entry["rss_ratio"],
    }
    if "walk" in lean:
        figures["baseline_walk"] = lean["walk"]
    previous = entry.get("previous_baseline")
    if previous:
        figures["previous_baseline_mib"] = previous["peak_rss_mib"]
        figures["previous_ratio"] = previous["rss_ratio"]
    return figures
