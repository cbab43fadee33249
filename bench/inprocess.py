"""mcpserver's App in this process, fed by a registry whose view the suite sets directly.

Fan-out and the istiod part need a whole new 10k set (or exactly one changed service) at a
moment of the suite's choosing, and nothing else in the way: a static file of 10k services
takes tens of seconds to re-parse, which would be measured nowhere and wasted everywhere.
The registry is a real `Registry` (the framework's base class), so everything after it (the
pipeline, the store, the ADS streams) is the server as deployed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import yaml

from bench.process import cpu_seconds
from bench.workload import STATIC_NAMESPACE, STATIC_PORT, Estate, address, static_host, static_name
from mcpserver import runtime
from mcpserver.app import App
from mcpserver.metrics import Metrics
from mcpserver.model import Instance, Port, Service
from mcpserver.registry.base import Registry
from mcpserver.settings import load_settings
from mcpserver.xds.snapshot import Snapshot

REGISTRY = "fixed"


def service(estate: Estate, i: int, first_octet: int, moved: bool = False) -> Service:
    """Service `i` of the estate, instances in `first_octet`/8; `moved`: its first instance
    in 13/8 instead (a one-service edit)."""
    instances = [
        Instance(address(i, j, first_octet), labels=(("version", "v1"), ("zone", f"z{j % 3}")))
        for j in range(estate.instances)
    ]
    if moved:
        instances[0] = Instance(address(i, 0, 13), labels=instances[0].labels)
    return Service(
        registry=REGISTRY,
        namespace=STATIC_NAMESPACE,
        name=static_name(i),
        hosts=(static_host(i),),
        ports=(Port("http", STATIC_PORT, "HTTP"),),
        instances=tuple(instances),
    )


def services(estate: Estate, first_octet: int, moved: Collection[int] = ()) -> list[Service]:
    """The estate as registry Services (`service`), the ones in `moved` edited."""
    edited = frozenset(moved)
    return [service(estate, i, first_octet, i in edited) for i in range(estate.services)]


class FixedRegistry(Registry):
    """A registry whose whole view the suite replaces."""

    def __init__(self, metrics: Metrics, initial: list[Service]) -> None:
        super().__init__(REGISTRY, metrics)
        self._initial = initial

    async def open(self) -> None:
        self.publish(self._initial, synced=True)

    def replace(self, services: list[Service]) -> None:
        self.publish(services, synced=True)


class InProcessServer:
    """App + FixedRegistry; `published` is stamped as the pipeline hands each new snapshot
    to the store, before any of the store's listeners runs (and `published_cpu` with the CPU
    time of process `watched` at that moment, if set).

    `layouts` are the shard counts served besides the whole set (server.shards and
    previous_shards: at most two), each on ephemeral ports (`app.shard_ports(N)`)."""

    def __init__(
        self, directory: Path, initial: list[Service], layouts: Sequence[int] = ()
    ) -> None:
        extra = sorted({n for n in layouts if n > 1}, reverse=True)
        if len(extra) > 2:
            raise ValueError(f"one server serves at most two shard layouts besides 1: {extra}")
        server: dict[str, object] = {"listen": "127.0.0.1:0", "admin": "127.0.0.1:0"}
        if extra:
            server["shards"] = extra[0]
        if len(extra) > 1:
            server["previous_shards"] = extra[1]
        config = directory / "mcpserver.yaml"
        config.write_text(
            yaml.safe_dump({"server": server, "log_level": "warning", "registries": []})
        )
        metrics = Metrics()
        self.registry = FixedRegistry(metrics, initial)
        self.app = App(load_settings(config, {}), metrics, [self.registry])
        self.published: list[float] = []
        self.published_cpu: list[float] = []
        self.watched: int | None = None
        self.publish_seen = asyncio.Event()

    @property
    def port(self) -> int:
        return self.app.port

    async def start(self) -> None:
        """Start the App with the interpreter's and allocator's settings `mcpserver serve`
        runs with (runtime.py, heap.py), settled as serve settles 2 s after its first
        snapshot: the suite measures the server as deployed, in its steady state. They last
        the process, as they do in serve; a baseline measured here afterwards runs with the
        allocator's serving settings, under which a large block is reused as under glibc's
        own moving threshold."""
        runtime.tune()
        store = self.app.store
        publish = store.publish

        def stamped(snapshot: Snapshot) -> None:
            self._published()
            publish(snapshot)

        # Stamped at the call, not by a listener: the app's own listeners (the change
        # tracker, subscribed when the app was made) run first and are part of the fan-out.
        store.publish = stamped  # type: ignore[method-assign]  # the bench's clock, see above
        await self.app.start()
        await self._until_published(lambda: store.snapshot is not None, 60.0)
        runtime.resume_collector()
        runtime.settle(self.app.metrics)

    def _published(self) -> None:
        # on the loop, before any stream task can send the new set: what the watched
        # process (istiod) has used before the change reaches it
        self.published_cpu.append(cpu_seconds(self.watched) if self.watched else math.nan)
        self.published.append(time.perf_counter())
        self.publish_seen.set()

    async def next_publish(self, replace: list[Service], within: float) -> float:
        """Replace the registry's view; the time the store publishes the result."""
        mark = len(self.published)
        self.registry.replace(replace)
        await self._until_published(lambda: len(self.published) > mark, within)
        return self.published[mark]

    async def _until_published(self, done: Callable[[], bool], within: float) -> None:
        """Wait, publish after publish, until `done()`."""
        async with asyncio.timeout(within):
            while not done():
                self.publish_seen.clear()
                await self.publish_seen.wait()

    async def stop(self) -> None:
        await self.app.stop()
