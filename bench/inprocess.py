"""mcpserver's App in this process, fed by a registry whose view the suite sets directly.

Fan-out and the istiod part need a whole new 10k set (or exactly one changed service) at a
moment of the suite's choosing, and nothing else in the way: a static file of 10k services
takes tens of seconds to re-parse, which would be measured nowhere and wasted everywhere.
The registry is a real `Registry` (the framework's base class), so everything after it (the
pipeline, the store, the ADS streams) is the server as deployed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from bench.workload import STATIC_NAMESPACE, STATIC_PORT, Estate, address, static_host, static_name
from mcpserver.app import App
from mcpserver.metrics import Metrics
from mcpserver.model import Instance, Port, Service
from mcpserver.registry.base import Registry
from mcpserver.settings import load_settings

REGISTRY = "fixed"


def services(estate: Estate, first_octet: int, moved: Sequence[int] = ()) -> list[Service]:
    """The estate as registry Services, instances in `first_octet`/8; the services in
    `moved` have their first instance in 13/8 instead (a one-service edit)."""
    out = []
    for i in range(estate.services):
        instances = [
            Instance(address(i, j, first_octet), labels=(("version", "v1"), ("zone", f"z{j % 3}")))
            for j in range(estate.instances)
        ]
        if i in moved:
            instances[0] = Instance(address(i, 0, 13), labels=instances[0].labels)
        out.append(
            Service(
                registry=REGISTRY,
                namespace=STATIC_NAMESPACE,
                name=static_name(i),
                hosts=(static_host(i),),
                ports=(Port("http", STATIC_PORT, "HTTP"),),
                instances=tuple(instances),
            )
        )
    return out


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
    """App + FixedRegistry; `published` is stamped by a store listener at every publish."""

    def __init__(self, directory: Path, initial: list[Service]) -> None:
        config = directory / "mcpserver.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "server": {"listen": "127.0.0.1:0", "admin": "127.0.0.1:0"},
                    "log_level": "warning",
                    "registries": [],
                }
            )
        )
        metrics = Metrics()
        self.registry = FixedRegistry(metrics, initial)
        self.app = App(load_settings(config, {}), metrics, [self.registry])
        self.published: list[float] = []
        self.publish_seen = asyncio.Event()

    @property
    def port(self) -> int:
        return self.app.port

    async def start(self) -> None:
        self.app.store.subscribe(self._published)
        await self.app.start()

    def _published(self) -> None:
        self.published.append(time.perf_counter())
        self.publish_seen.set()

    async def next_publish(self, replace: list[Service], within: float) -> float:
        """Replace the registry's view; the time the store publishes the result."""
        mark = len(self.published)
        self.registry.replace(replace)
        async with asyncio.timeout(within):
            while len(self.published) <= mark:
                self.publish_seen.clear()
                await self.publish_seen.wait()
        return self.published[mark]

    async def stop(self) -> None:
        await self.app.stop()
