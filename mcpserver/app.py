"""Composition root: builds every part from Settings, starts them in order, stops them in reverse.

Start order matters to istiod: the gRPC port opens first (istiod exits if it cannot open its
stream), but streams get nothing until the first complete snapshot; registries start next,
and the startup wait bounds how long a missing registry can hold that first snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence

from mcpserver.admin import Admin
from mcpserver.debounce import Debouncer
from mcpserver.metrics import Metrics
from mcpserver.pipeline import Pipeline
from mcpserver.registry.base import Registry
from mcpserver.registry.consul.watcher import ConsulRegistry
from mcpserver.registry.static.watcher import StaticRegistry
from mcpserver.registry.zookeeper.watcher import ZooKeeperRegistry
from mcpserver.settings import (
    ConsulRegistrySettings,
    RegistryConfig,
    Settings,
    ZooKeeperRegistrySettings,
)
from mcpserver.xds.server import ServerOptions, XdsServer
from mcpserver.xds.sotw import AdsHandler, Clients
from mcpserver.xds.store import SnapshotStore

log = logging.getLogger("mcpserver")


def build_registry(settings: RegistryConfig, metrics: Metrics) -> Registry:
    """One registry object per configured entry, by kind."""
    if isinstance(settings, ZooKeeperRegistrySettings):
        return ZooKeeperRegistry(settings, metrics, os.environ)
    if isinstance(settings, ConsulRegistrySettings):
        return ConsulRegistry(settings, metrics, os.environ)
    return StaticRegistry(settings, metrics)


class App:
    """The running server; tests build it directly with ephemeral ports.

    `registries` replaces the ones the settings describe (tests inject registries whose
    sync they control).
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        registries: Sequence[Registry] | None = None,
    ) -> None:
        self.settings = s = settings
        self.metrics = metrics or Metrics()
        self.store = SnapshotStore()
        self.clients = Clients()
        self.registries = (
            list(registries)
            if registries is not None
            else [build_registry(r, self.metrics) for r in s.registries]
        )
        self.xds = XdsServer(
            ServerOptions(
                listen=s.server.listen,
                max_message_bytes=s.server.max_message_bytes,
                cert_file=str(s.server.tls.cert_file) if s.server.tls else None,
                key_file=str(s.server.tls.key_file) if s.server.tls else None,
            ),
            AdsHandler(self.store, self.metrics, self.clients),
        )
        self.pipeline = Pipeline(
            self.registries,
            self.store,
            self.metrics,
            startup_wait=s.startup.wait_for_registries,
            keep_when_empty={r.name: r.keep_when_empty for r in s.registries},
            vip_cidr=s.vip.cidr,
            merge_policy=s.merge,
            on_primed=self.xds.serving,
        )
        self.debouncer = Debouncer(self.pipeline.rebuild, s.debounce.after, s.debounce.max)
        self.admin = Admin(s.server.admin, self.store, self.pipeline, self.clients, self.metrics)
        self._startup_timer: asyncio.TimerHandle | None = None

    @property
    def port(self) -> int:
        return self.xds.port

    async def start(self) -> None:
        await self.xds.start()
        await self.admin.start()
        self.debouncer.start()
        for registry in self.registries:
            await registry.start(self.debouncer.trigger)
        # Fire one rebuild when the startup wait ends, in case a registry never syncs.
        loop = asyncio.get_running_loop()
        self._startup_timer = loop.call_later(
            self.pipeline.startup_remaining() + 0.01, self.debouncer.trigger
        )
        self.debouncer.trigger()

    async def stop(self) -> None:
        if self._startup_timer:
            self._startup_timer.cancel()
        for registry in reversed(self.registries):
            await registry.stop()
        await self.debouncer.stop()
        await self.xds.stop()
        await self.admin.stop()


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM."""
    app = App(settings)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("mcpserver serving xds=%s admin=%s", settings.server.listen, settings.server.admin)
    await stop.wait()
    log.info("shutting down")
    await app.stop()
