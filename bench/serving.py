"""A server under test watching one ZooKeeper estate, with a probe that holds its full set:
what change latency and churn both start from. Kept for the suite's run (by debounce), so
parts that need the same server do not pay for its cold start twice.
"""

from __future__ import annotations

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
    server: ServerProcess
    probe: Probe
    view: EndpointView
    ready_seconds: float

    def full(self) -> bool:
        return len(self.view.endpoints) == self.estate.services and (
            self.view.count() == self.estate.endpoints
        )

    async def close(self) -> None:
        await self.probe.stop()
        self.server.stop()


async def zookeeper_serving(bench: Bench, estate: Estate, debounce: str) -> Serving:
    """The server for this estate and debounce, started (and its full set held) once."""
    key = (estate.services, debounce)
    kept = bench.servings.get(key)
    if kept is not None and kept.server.alive():
        await kept.probe.until(kept.full, bench.config.deadline)  # after a restored churn
        return kept
    for other in [k for k in bench.servings if k[0] == estate.services]:
        await bench.servings.pop(other).close()  # it would take every write too
    root = await bench.zookeeper.estate(estate)
    directory = bench.scratch(f"zk-serving-{estate.services}-debounce-{debounce}")
    registry = bench.zookeeper.registry(root)
    server = ServerProcess(directory, bench_settings(directory, [registry], DEBOUNCES[debounce]))
    server.start()
    probe = Probe(server.port)
    view = EndpointView()
    probe.listeners.append(view.apply)
    probe.start()
    serving = Serving(estate, root, debounce, server, probe, view, 0.0)
    try:
        held = await server.running(probe.until(serving.full, bench.config.deadline))
    except TimeoutError:
        await serving.close()
        raise RuntimeError(f"no full set in time; server log:\n{server.log_tail()}") from None
    except BaseException:
        await serving.close()
        raise
    serving.ready_seconds = held - server.spawned_at
    bench.log(
        f"serving {estate.services} ZooKeeper services (debounce {debounce}) after "
        f"{serving.ready_seconds:.1f}s"
    )
    bench.servings[key] = serving
    return serving
