"""Part (f) with shards: what one changed service costs the real istiod, and the wire, when
istiod reads the set as N sources (server.shards; README "Sharded serving").

One in-process server serves the 10k estate whole and cut into each N measured (`layouts`:
server.shards and previous_shards, so N = 1, 4 and 16 come from the very same builder and
snapshots). For each N in turn, an istiod is started with one `configSources` entry per shard
(then `k8s://`, as deployed), and alone takes a series of pushes, each one service edited
(its first instance moved, as part f's own pushes do):

- per push: istiod's CPU from the store's publish (read on the loop before any stream sends)
  until every stream of the layout has ACKed (adsc ACKs after handleMCP) and istiod has then
  used no more than its idle rate over SETTLE_WINDOW; its idle rate subtracted. Which
  shards sent a response, and how many bytes went out (mcpserver_xds_response_bytes_total,
  by shard label).
- per series: istiod's CPU from the first publish until it is quiet after the last push,
  over the pushes: the amortized cost, which includes Go's garbage collections. A collection
  marks istiod's whole heap and comes after a share of the heap has been allocated, so it
  lands on one push in a few at N = 1 and one in dozens at N = 16; the median push misses it,
  the series does not. istiod runs with GODEBUG=gctrace=1, and its log's collections in the
  series are counted.

No proxy is connected: what is measured is the config source's cost (adsc, the store, the
ServiceEntry controller and an EDS update with nobody to push to), not proxy pushes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bench.context import Bench
from bench.inprocess import InProcessServer, service, services
from bench.istiodcost import collections_in, gc_traced
from bench.process import QUIET_WINDOW, cpu_seconds, quiet
from bench.stats import median, percentile
from bench.workload import STATIC_NAMESPACE, Estate, address, static_name
from mcpserver.metrics import Metrics
from mcpserver.xds.shards import shard_label, shard_of
from mcpserver.xds.typeurls import MESH_CONFIG
from testbed.istiod import Istiod
from testbed.kube import ControlPlane

SETTLE_WINDOW = 0.3
"""Seconds of idle after a push's ACK that end the push (istiod's own debounce is 100 ms)."""


def by_shard(metrics: Metrics, counter: str) -> dict[str, float]:
    """A per-shard counter of the in-process server (summed over type URLs)."""
    out: dict[str, float] = {}
    for family in getattr(metrics, counter).collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                shard = sample.labels["shard"]
                out[shard] = out.get(shard, 0.0) + sample.value
    return out


def settled(server: InProcessServer, labels: set[str], responses: dict[str, float]) -> bool:
    """A response went out on the layout since `responses`, and every stream of the layout
    has ACKed the last it was sent (MeshConfig excepted: adsc never ACKs it)."""
    now = by_shard(server.app.metrics, "responses")
    if sum(now.get(k, 0.0) - responses.get(k, 0.0) for k in labels) <= 0:
        return False
    streams = [c for c in server.app.clients.open.values() if c.shard in labels]
    return all(
        state.acked == state.version
        for client in streams
        for url, state in client.types.items()
        if url != MESH_CONFIG and state.version
    )


async def wait_settled(
    server: InProcessServer, labels: set[str], responses: dict[str, float], within: float
) -> float:
    """When the layout has settled: polled, as nothing but the server's client table says
    that an ACK came (5 ms steps, against pushes of 30 ms and more)."""
    async with asyncio.timeout(within):
        while True:
            if settled(server, labels, responses):
                return time.perf_counter()
            await asyncio.sleep(0.005)


async def series(
    bench: Bench,
    server: InProcessServer,
    istiod: Istiod,
    shards: int,
    moved: list[int],
    estate: Estate,
    idle_rate: float,
) -> dict[str, Any]:
    """`istiod_shard_pushes` pushes of one edited service each, to the istiod reading
    layout `shards`."""
    config = bench.config
    assert istiod.process is not None
    pid = istiod.process.pid
    labels = {shard_label(shards, k) for k in range(shards)}
    allowance = max(0.003, 3 * idle_rate * SETTLE_WINDOW)
    gcs_before = collections_in(istiod.log())
    pushes: list[dict[str, Any]] = []
    # the services not edited stay the same objects, as a registry keeps what it did not
    # change: the server's rebuild is then one service's work, and the series quick
    current = services(estate, 10, moved)
    for _ in range(config.istiod_shard_pushes):
        edited = len(moved) * 7 % estate.services
        moved.append(edited)
        current[edited] = service(estate, edited, 10, moved=True)
        home = shard_label(shards, shard_of(f"{STATIC_NAMESPACE}/{static_name(edited)}", shards))
        responses = by_shard(server.app.metrics, "responses")
        sent = by_shard(server.app.metrics, "response_bytes")
        at = await server.next_publish(list(current), config.deadline)
        cpu_at = server.published_cpu[-1]
        acked = await wait_settled(server, labels, responses, config.deadline)
        until, cpu = await quiet(pid, allowance, config.deadline, SETTLE_WINDOW)
        responded = {
            k: v - responses.get(k, 0.0)
            for k, v in by_shard(server.app.metrics, "responses").items()
            if k in labels and v > responses.get(k, 0.0)
        }
        now_sent = by_shard(server.app.metrics, "response_bytes")
        pushes.append(
            {
                "at": at,
                "cpu_at": cpu_at,
                "cpu_seconds": cpu - cpu_at - idle_rate * max(0.0, until - at),
                "busy_seconds": until - at,
                "ack_seconds": acked - at,
                "bytes": sum(now_sent.get(k, 0.0) - sent.get(k, 0.0) for k in labels),
                "responses": responded,
                "home_shard": home,
            }
        )
    allowance = max(0.005, 3 * idle_rate * QUIET_WINDOW)
    until, cpu = await quiet(pid, allowance, config.deadline)
    first = pushes[0]
    total = cpu - first["cpu_at"] - idle_rate * (until - first["at"])
    gcs = {n: ms for n, ms in collections_in(istiod.log()).items() if n not in gcs_before}
    cpus = [p["cpu_seconds"] for p in pushes]
    only_home = sum(1 for p in pushes if set(p["responses"]) == {p["home_shard"]})
    for push in pushes:
        del push["at"], push["cpu_at"]
    return {
        "shards": shards,
        "pushes": pushes,
        "cpu_seconds_amortized": total / len(pushes),
        "cpu_seconds_median": median(cpus),
        "cpu_seconds_p90": percentile(cpus, 90),
        "bytes_per_change": median([p["bytes"] for p in pushes]),
        "pushes_on_the_home_shard_only": only_home,
        "ack_seconds_median": median([p["ack_seconds"] for p in pushes]),
        "go_collections": len(gcs),
        "go_collection_cpu_seconds": sum(gcs.values()) / 1e3,
        "idle_cpu_rate": idle_rate,
    }


async def measure(
    bench: Bench, binary: Path, plane: ControlPlane, estate: Estate, moved: list[int]
) -> dict[str, Any]:
    """Every layout of config.istiod_shards, one istiod at a time, on one server."""
    config = bench.config
    layouts = sorted(set(config.istiod_shards))
    server = InProcessServer(bench.scratch("shards-mcpserver"), services(estate, 10), layouts)
    await server.start()
    result: dict[str, Any] = {
        "what": "istiod CPU for a push where one of the services changed, istiod reading the "
        "set as N sources (one per shard); amortized over a series of pushes (Go's "
        "collections included) and the median push; bytes sent per change",
        "baseline": "N = 1: the same istiod reading the whole set as one source, same server",
        "services": estate.services,
        "layouts": {},
    }
    try:
        for shards in layouts:
            workdir = bench.scratch(f"istiod-{shards}-shards")
            ports = server.app.shard_ports(shards)
            sources = [{"address": f"xds://127.0.0.1:{p}"} for p in ports]
            istiod = Istiod(
                binary,
                workdir,
                server.port,
                kubeconfig=plane.istiod_kubeconfig(),
                sources=[*sources, {"address": "k8s://"}],
            )
            try:
                with gc_traced():
                    istiod.start()
                assert istiod.process is not None
                await asyncio.to_thread(istiod.wait_ready, config.deadline)
                started, cpu0 = await quiet(istiod.process.pid, 0.05, config.deadline)
                await asyncio.sleep(3)  # the idle rate, over 3 s
                idle_rate = (cpu_seconds(istiod.process.pid) - cpu0) / (
                    time.perf_counter() - started
                )
                server.watched = istiod.process.pid
                entry = await series(bench, server, istiod, shards, moved, estate, idle_rate)
                entry["startup_cpu_seconds"] = cpu0
                last = moved[-1]
                held = istiod.configs().get(f"{STATIC_NAMESPACE}/{static_name(last)}")
                found = [e["address"] for e in (held or {}).get("spec", {}).get("endpoints", [])]
                entry["istiod_holds_last_edit"] = address(last, 0, 13) in found
                result["layouts"][str(shards)] = entry
                bench.log(
                    f"istiod reading {shards} shard(s): {entry['cpu_seconds_amortized']:.4f} s "
                    f"CPU per push amortized (median {entry['cpu_seconds_median']:.4f} s, "
                    f"{entry['go_collections']} Go collections), "
                    f"{entry['bytes_per_change'] / 1e3:.0f} kB per change"
                )
            finally:
                server.watched = None
                await asyncio.to_thread(istiod.kill)
    finally:
        await server.stop()
    one = result["layouts"].get("1")
    if one:
        for shards, entry in result["layouts"].items():
            entry["cpu_ratio"] = entry["cpu_seconds_amortized"] / one["cpu_seconds_amortized"]
            entry["cpu_ratio_median"] = entry["cpu_seconds_median"] / one["cpu_seconds_median"]
            entry["bytes_ratio"] = entry["bytes_per_change"] / one["bytes_per_change"]
            if shards == "16":
                result["targets"] = {
                    "cpu": {
                        "rule": "16 shards <= 1/8 of N = 1",
                        "met": entry["cpu_ratio"] <= 1 / 8,
                    },
                    "bytes": {
                        "rule": "16 shards <= 1/10 of N = 1",
                        "met": entry["bytes_ratio"] <= 1 / 10,
                    },
                }
    return result
