"""The admin HTTP server: health, readiness, Prometheus metrics, the status page and /debug.

MCP over xDS is hard to debug (seed article 000); these pages show what we would send to
istiod, who is connected and what was withheld, without needing an ADS client.

The status page and /debug show registry contents and let an operator confirm a held mass
removal, so an optional bearer token protects them (`server.admin_token`). Probes and
scrapers keep working without it: /healthz, /readyz and /metrics stay open. Browsers cannot
send a bearer token from a link, so HTTP Basic with the token as the password (any user
name) is accepted too, and the 401 asks for it: the status page then works in a browser.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mcpserver.changes import Activity
from mcpserver.codec import Document, encode_document
from mcpserver.metrics import Metrics, build_labels
from mcpserver.model import Problem
from mcpserver.peers import FORWARDED
from mcpserver.pipeline import Pipeline
from mcpserver.sink.config import SINK
from mcpserver.status_page import (
    ENDPOINTS,
    HeldRemoval,
    Page,
    RegistryRow,
    ShardRow,
    instances_of,
    registry_problems,
    render,
)
from mcpserver.xds.shards import shard_label
from mcpserver.xds.sotw import Clients
from mcpserver.xds.store import SnapshotStore

log = logging.getLogger("mcpserver.admin")

OPEN_PATHS: Final = frozenset(e.path for e in ENDPOINTS if e.open)
"""Paths every prober and scraper may read without the admin token."""
REFRESH_SECONDS: Final = 5
"""The status page's default refresh; `?refresh=N` changes it (0 turns it off)."""
MAX_REFRESH_SECONDS: Final = 3600

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Forward = Callable[[str], Awaitable[dict[str, str]]]
"""Pass a confirmation of this registry on to the peers: {peer: outcome} (peers.py)."""


def authorized(header: str, token: str) -> bool:
    """`Bearer TOKEN`, or `Basic` with TOKEN as the password; compared in constant time."""
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
    elif scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.encode(), token.encode())


class RegistryKindName(Protocol):
    """A configured registry entry: its name and kind (any registry settings model)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    def source(self) -> str:
        """Where its records come from (a file, hosts, an address)."""
        ...


class Admin:
    """aiohttp application and runner for the admin port."""

    def __init__(
        self,
        listen: str,
        store: SnapshotStore,
        pipeline: Pipeline,
        clients: Clients,
        metrics: Metrics,
        kinds: Sequence[RegistryKindName] = (),
        *,
        token: str | None = None,
        activity: Activity | None = None,
        shard_ports: Mapping[int, Sequence[int]] | None = None,
        replica: str = "",
        forward: Forward | None = None,
        sink: Callable[[], Mapping[str, object]] | None = None,
    ) -> None:
        self._replica = replica
        self._sink = sink
        self._forward = forward
        self._kinds = kinds
        # layout N > 1 -> the ports of its shards (server.shards, previous_shards)
        self._shard_ports = {n: list(p) for n, p in (shard_ports or {}).items() if n > 1}
        self._token = token or None
        self._activity = activity or Activity()
        self._version = build_labels()["version"]
        self._host, _, port = listen.rpartition(":")
        self._host = self._host.strip("[]")
        self._port = int(port)
        self._store = store
        self._pipeline = pipeline
        self._clients = clients
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self.port = self._port
        self.shutting_down = False
        app = web.Application(middlewares=[self._guard])
        # what answers each endpoint of the table (status_page.ENDPOINTS), which says what
        # each is for and which are open: a path of one without the other fails here
        handlers: Mapping[str, Callable[[web.Request], Awaitable[web.Response]]] = {
            "/": self.page,
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/metrics": self.metrics,
            "/debug/snapshot": self.snapshot,
            "/debug/clients": self.clients,
            "/debug/registries": self.registries,
            "/debug/registries/{name}/confirm": self.confirm,
            "/debug/problems": self.problems,
            "/debug/accepted": self.accepted,
            "/debug/sink": self.sink,
        }
        if handlers.keys() != {e.path for e in ENDPOINTS}:
            raise AssertionError("admin handlers and status_page.ENDPOINTS disagree")
        for endpoint in ENDPOINTS:
            if endpoint.method == "GET":  # and HEAD, as aiohttp adds a GET route
                app.router.add_get(endpoint.path, handlers[endpoint.path])
            else:
                app.router.add_route(endpoint.method, endpoint.path, handlers[endpoint.path])
        self._app = app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """With a token configured, everything but the probes and /metrics needs it (every
        state-changing endpoint is under /debug)."""
        if self._token is None or request.path in OPEN_PATHS:
            return await handler(request)
        if authorized(request.headers.get("Authorization", ""), self._token):
            return await handler(request)
        return web.json_response(
            {"error": "unauthorized: send Authorization: Bearer <server.admin_token>"},
            status=401,
            headers={"WWW-Authenticate": 'Basic realm="mcpserver admin", charset="UTF-8"'},
        )

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        # the only way to learn an ephemeral port; aiohttp types _server as an
        # asyncio.AbstractServer, which declares no `sockets`
        server = site._server
        if server is not None and server.sockets:  # type: ignore[attr-defined]  # see above
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]  # see above
        log.info("admin listening address=%s:%d", self._host, self.port)

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def readiness(self) -> dict[str, object]:
        """Ready = serving a snapshot that is current: not before the first one, not while
        rebuilds fail, not once shutdown has begun (so load balancers stop sending)."""
        snapshot = self._store.snapshot
        if self.shutting_down:
            return {"ready": False, "reason": "shutting down"}
        if snapshot is None:
            waiting = self._pipeline.waiting_for()
            reason = f"first snapshot waits for registries {', '.join(waiting)}"
            return {"ready": False, "reason": reason, "waiting_for": waiting}
        if self._pipeline.failure:
            return {"ready": False, "reason": self._pipeline.failure, "version": snapshot.version}
        return {"ready": True, "version": snapshot.version}

    async def readyz(self, _: web.Request) -> web.Response:
        body = self.readiness()
        return web.json_response(body, status=200 if body["ready"] else 503)

    def registry_rows(self) -> list[RegistryRow]:
        """Each registry for the status page, a held removal included."""
        kinds = {r.name: r.kind for r in self._kinds}
        sources = {r.name: r.source() for r in self._kinds}
        now_wall, now_mono = time.time(), time.monotonic()
        rows = []
        for state in self._pipeline.registry_states():
            v, hold = state.view, state.hold
            held = (
                None
                if hold is None
                else HeldRemoval(
                    reason=hold.reason,
                    since=now_wall - (now_mono - hold.since),
                    removed_services=hold.removed_services,
                    removed_instances=hold.removed_instances,
                    instances=hold.total_instances,
                )
            )
            listed = (len(v.services), instances_of(v.services))
            rows.append(
                RegistryRow(
                    name=v.registry,
                    kind=kinds.get(v.registry, ""),
                    status=v.status.value,
                    synced=v.synced,
                    services=state.served[0],
                    instances=state.served[1],
                    detail=v.detail,
                    last_change=self._activity.registry_changed.get(v.registry),
                    held=held,
                    listed=None if listed == state.served else listed,
                    source=sources.get(v.registry, ""),
                    origin=state.origin or "own",
                )
            )
        return rows

    def problem_list(self, rows: Sequence[RegistryRow]) -> list[Problem]:
        """Every problem: degraded registries first, then what the pipeline withheld,
        skipped or holds (the status page and /debug/problems show the same list)."""
        served = self._store.snapshot is not None
        return [*registry_problems(rows, served), *self._pipeline.problems, *self.sink_problems()]

    def sink_problems(self) -> list[Problem]:
        """The Kubernetes sink's troubles, as the page and /debug/problems show them: a
        sync that did not complete (objects refused, names others hold), a Lease it cannot
        reach."""
        if self._sink is None:
            return []
        status = self._sink()
        found = []
        for subject, key in (
            ("kubernetes sink", "error"),
            ("kubernetes sink lease", "lease_error"),
        ):
            if status.get(key):
                found.append(Problem(SINK, subject, str(status[key]), "sink"))
        return found

    async def page(self, request: web.Request) -> web.Response:
        """The status page: server-rendered HTML, refreshed by the browser itself."""
        try:
            refresh = int(request.query.get("refresh", REFRESH_SECONDS))
        except ValueError:
            refresh = REFRESH_SECONDS
        readiness = self.readiness()
        change = self._activity.last_change
        rows = self.registry_rows()
        page = Page(
            version=self._version,
            now=time.time(),
            started_at=self._activity.started_at,
            ready=bool(readiness["ready"]),
            ready_reason=str(readiness.get("reason", "")),
            registries=rows,
            snapshot=self._store.snapshot,
            published_at=self._activity.published_at,
            last_change=change.summary() if change is not None else "",
            clients=sorted(self._clients.open.values(), key=lambda c: c.stream_id),
            problems=self.problem_list(rows),
            refresh=max(0, min(refresh, MAX_REFRESH_SECONDS)),
            shards=self.shard_rows(),
            admin_url=str(request.url.origin()),
        )
        return web.Response(
            text=render(page),
            content_type="text/html",
            headers={"Cache-Control": "no-store"},
        )

    def shard_rows(self) -> list[ShardRow]:
        """Each shard of every layout served, for the status page."""
        snapshot = self._store.snapshot
        readers = Counter(c.shard for c in self._clients.open.values())
        return [
            ShardRow(
                shard_label(n, k),
                port,
                None if snapshot is None else snapshot.part(n, k),
                readers[shard_label(n, k)],
            )
            for n, ports in sorted(self._shard_ports.items())
            for k, port in enumerate(ports)
        ]

    async def metrics(self, _: web.Request) -> web.Response:
        self._metrics.count_tasks()
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
        body: dict[str, object] = {"primed": True, "version": snapshot.version, "kinds": kinds}
        if self._shard_ports:
            # each shard's part: names and versions (bodies are in `kinds` above)
            body["shards"] = [
                {
                    "shard": shard_label(n, k),
                    "port": port,
                    "version": part.version,
                    "kinds": {
                        kind: {
                            "version": s.version,
                            "count": len(s.resources),
                            "names": [r.name for r in s.resources],
                        }
                        for kind, s in part.sets.items()
                    },
                }
                for n, ports in sorted(self._shard_ports.items())
                for k, port in enumerate(ports)
                for part in [snapshot.part(n, k)]
            ]
        return web.json_response(body)

    async def clients(self, _: web.Request) -> web.Response:
        return web.json_response([c.describe() for c in self._clients.open.values()])

    async def registries(self, _: web.Request) -> web.Response:
        """Each registry as it reports itself; a held mass removal shows it DEGRADED with
        the reason (the registry's own status is kept under `source`)."""
        kinds = {r.name: r.kind for r in self._kinds}
        sources = {r.name: r.source() for r in self._kinds}
        entries = []
        for state in self._pipeline.registry_states():
            v, hold = state.view, state.hold
            entry: dict[str, object] = {
                "name": v.registry,
                "kind": kinds.get(v.registry, ""),
                "source": sources.get(v.registry, ""),
                "status": v.status.value,
                "synced": v.synced,
                "services": len(v.services),
                "instances": instances_of(v.services),
                "served": {"services": state.served[0], "instances": state.served[1]},
                "last_change": self._activity.registry_changed.get(v.registry),
                "detail": v.detail,
            }
            if hold is not None:
                entry.update(
                    status="degraded",
                    detail=hold.reason,
                    source={"status": v.status.value, "detail": v.detail},
                    held={
                        "cause": hold.cause,
                        "origin": state.origin or "own",
                        "removed_services": hold.removed_services,
                        "removed_instances": hold.removed_instances,
                        "instances": hold.total_instances,
                        "confirm": f"POST /debug/registries/{v.registry}/confirm",
                    },
                )
            entries.append(entry)
        return web.json_response(entries)

    async def confirm(self, request: web.Request) -> web.Response:
        """An operator confirms a held mass removal of one registry: here, and on every
        peer (a confirmation passed on by a peer is not passed on again; one that comes
        back to its sender is ignored)."""
        name = request.match_info["name"]
        sender = request.headers.get(FORWARDED)
        if sender is not None and sender == self._replica:
            return web.json_response({"self": True})
        names = [state.view.registry for state in self._pipeline.registry_states()]
        if name not in names:
            reason = f"no registry named {name!r} (registries: {', '.join(names) or 'none'})"
            return web.json_response(
                {"confirmed": False, "registry": name, "reason": reason}, status=404
            )
        confirmed = self._pipeline.confirm(name)
        body: dict[str, object] = {"confirmed": confirmed, "registry": name}
        if not confirmed:
            body["reason"] = "no held removal"
        if sender is None and self._forward is not None:
            peers = await self._forward(name)
            body["peers"] = peers
            confirmed = confirmed or "confirmed" in peers.values()
        return web.json_response(body, status=200 if confirmed else 404)

    async def accepted(self, _: web.Request) -> web.Response:
        """What protection remembers of each registry (codec.py's document): what a peer
        that starts takes over. Encoded off the loop (10k services take a while)."""
        document = Document(
            self._replica,
            time.time(),
            self._store.snapshot is not None,
            self._pipeline.remembered(),
        )
        body = await asyncio.to_thread(lambda: json.dumps(encode_document(document)).encode())
        return web.Response(body=body, content_type="application/json")

    async def sink(self, _: web.Request) -> web.Response:
        """The Kubernetes sink: whether this replica leads, what it owns, what it could not
        write; `{"enabled": false}` when `sink` does not name kubernetes."""
        if self._sink is None:
            return web.json_response({"enabled": False, "sink": ["mcp"]})
        return web.json_response({"enabled": True, **self._sink()})

    async def problems(self, _: web.Request) -> web.Response:
        return web.json_response(
            [
                {"registry": p.registry, "subject": p.subject, "message": p.message}
                for p in self.problem_list(self.registry_rows())
            ]
        )
