"""A server under test watching one ZooKeeper estate, with probes that hold its full set:
what change latency and churn both start from. Kept for the suite's run (by scale, debounce
and shard count), so parts that need the same server do not pay for its cold start twice.

With `shards` N > 1 the server runs with server.shards: N and one probe reads each shard's
port, as istiod reads N sources; `views[k]` is what shard k serves.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bench.context import Bench
from bench.probe import EndpointView, Probe
from bench.process import ServerProcess, bench_settings
from bench.workload import Estate

DEBOUNCES = {"default": None, "0": ("0s", "0s")}
"""`debounce` settings by name: the default (100ms/500ms), or none at all."""


@dataclass
class Serving:
    estate: Estate
    root: str
    debounce: str
    shards: int
    server: ServerProcess
    probes: list[Probe]
    views: list[EndpointView]
    ready_seconds: float

    @property
    def probe(self) -> Probe:
        """The probe of an unsharded serving (the whole set)."""
        assert len(self.probes) == 1
        return self.probes[0]

    @property
    def view(self) -> EndpointView:
        assert len(self.views) == 1
        return self.views[0]

    def full(self) -> bool:
        hosts = sum(len(v.endpoints) for v in self.views)
        return hosts == self.estate.services and (
            sum(v.count() for v in self.views) == self.estate.endpoints
        )

    def shard_of_host(self) -> dict[str, int]:
        """host -> the shard serving it (once full)."""
        return {host: k for k, view in enumerate(self.views) for host in view.endpoints}

    async def close(self) -> None:
        for probe in self.probes:
            await probe.stop()
        self.server.stop()


async def zookeeper_serving(
    bench: Bench, estate: Estate, debounce: str, shards: int = 1
) -> Serving:
    """The server for this estate, debounce and shard count, started (and its full set held)
    once."""
    key = (estate.services, debounce, shards)
    kept = bench.servings.get(key)
    if kept is not None and kept.server.alive():
        await kept.probes[0].until(kept.full, bench.config.deadline)  # after a restored churn
        return kept
    await bench.close_servings(estate.services)  # another would take every write too
    root = await bench.zookeeper.estate(estate)
    name = f"zk-serving-{estate.services}-debounce-{debounce}-shards-{shards}"
    directory = bench.scratch(name)
    registry = bench.zookeeper.registry(root)
    settings = bench_settings(directory, [registry], DEBOUNCES[debounce], shards)
    server = ServerProcess(directory, settings)
    server.start()
    probes = [Probe(port) for port in server.shard_ports(shards)]
    views = [EndpointView() for _ in probes]
    for probe, view in zip(probes, views, strict=True):
        probe.listeners.append(view.apply)
        probe.start()
    serving = Serving(estate, root, debounce, shards, server, probes, views, 0.0)
    try:
        # any probe's response may be the one that completes the set
        held = await server.running(wait_full(serving, bench.config.deadline))
    except TimeoutError:
        await serving.close()
        raise RuntimeError(f"no full set in time; server log:\n{server.log_tail()}") from None
    except BaseException:
        await serving.close()
        raise
    serving.ready_seconds = held - server.spawned_at
    bench.log(
        f"serving {estate.services} ZooKeeper services (debounce {debounce}, {shards} "
        f"shard(s)) after {serving.ready_seconds:.1f}s"
    )
    bench.servings[key] = serving
    return serving


async def wait_full(serving: Serving, within: float) -> float:
    """The arrival time of the response after which the probes together held the whole set
    (whichever probe's response completed it)."""
    waits = [asyncio.ensure_future(p.until(serving.full, within)) for p in serving.probes]
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        return max(task.result() for task in done)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
