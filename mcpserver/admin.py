"""The admin HTTP server: health, readiness, Prometheus metrics and /debug pages.

MCP over xDS is hard to debug (seed article 000); these pages show what we would send to
istiod, who is connected and what was withheld, without needing an ADS client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mcpserver.metrics import Metrics
from mcpserver.pipeline import Pipeline
from mcpserver.xds.sotw import Clients
from mcpserver.xds.store import SnapshotStore

log = logging.getLogger("mcpserver.admin")


class Admin:
    """aiohttp application and runner for the admin port."""

    def __init__(
        self,
        listen: str,
        store: SnapshotStore,
        pipeline: Pipeline,
        clients: Clients,
        metrics: Metrics,
    ) -> None:
        self._host, _, port = listen.rpartition(":")
        self._host = self._host.strip("[]")
        self._port = int(port)
        self._store = store
        self._pipeline = pipeline
        self._clients = clients
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self.port = self._port
        app = web.Application()
        routes: Sequence[tuple[str, Callable[[web.Request], object]]] = (
            ("/healthz", self.healthz),
            ("/readyz", self.readyz),
            ("/metrics", self.metrics),
            ("/debug/snapshot", self.snapshot),
            ("/debug/clients", self.clients),
            ("/debug/registries", self.registries),
            ("/debug/problems", self.problems),
        )
        for path, handler in routes:
            app.router.add_get(path, handler)  # type: ignore[arg-type]
        self._app = app

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server  # the only way to learn an ephemeral port
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info("admin listening address=%s:%d", self._host, self.port)

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _: web.Request) -> web.Response:
        snapshot = self._store.snapshot
        if snapshot is None:
            waiting = [v.registry for v in self._pipeline.views() if not v.synced]
            return web.json_response({"ready": False, "waiting_for": waiting}, status=503)
        return web.json_response({"ready": True, "version": snapshot.version})

    async def metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def snapshot(self, request: web.Request) -> web.Response:
        snapshot = self._store.snapshot
        if snapshot is None:
            return web.json_response({"primed": False}, status=503)
        full = request.query.get("full") in ("1", "true")
        kinds: dict[str, object] = {}
        for kind, type_set in snapshot.sets.items():
            items: list[object] = []
            for resource in type_set.resources:
                entry: dict[str, object] = {"name": resource.name, "version": resource.version}
                if full:
                    from google.protobuf import json_format

                    entry["resource"] = json_format.MessageToDict(resource.decode())
                items.append(entry)
            kinds[kind] = {"version": type_set.version, "count": len(items), "resources": items}
        return web.json_response({"primed": True, "version": snapshot.version, "kinds": kinds})

    async def clients(self, _: web.Request) -> web.Response:
        return web.json_response([c.describe() for c in self._clients.open.values()])

    async def registries(self, _: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "name": v.registry,
                    "status": v.status.value,
                    "synced": v.synced,
                    "services": len(v.services),
                    "detail": v.detail,
                }
                for v in self._pipeline.views()
            ]
        )

    async def problems(self, _: web.Request) -> web.Response:
        return web.json_response(
            [
                {"registry": p.registry, "subject": p.subject, "message": p.message}
                for p in self._pipeline.problems
            ]
        )
