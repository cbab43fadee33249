"""Keeps a Consul registry's view current with blocking queries, on the event loop.

One task per datacenter long-polls the service list (`/v1/catalog/services`); one task per
(datacenter, service) long-polls `/v1/health/service/<name>`. Every call is bounded by
`wait` plus a margin, so a connection that silently dies is cut and retried (python-consul2's
missing timeout is why we use py-consul). Errors back off with jitter; a Consul index that goes
backwards (a restarted agent or server) resets to a full re-list. While Consul is unreachable
the last view stays served (DEGRADED).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import random
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import consul
import consul.aio
from consul.callback import CB

from mcpserver.metrics import Metrics
from mcpserver.model import Problem, Service
from mcpserver.registry.base import OnChange, Registry, Status, View
from mcpserver.registry.consul.parser import (
    ConsulInstance,
    ConsulOptions,
    build_services,
    parse_health,
)
from mcpserver.settings import ConsulRegistrySettings

log = logging.getLogger("mcpserver.registry.consul")

LISTING_BATCH = 0.1  # seconds between views while the first listing arrives
TIMEOUT_MARGIN = 5.0  # beyond wait + wait/8: Consul adds up to wait/16 of jitter
ERRORS = (consul.ConsulException, aiohttp.ClientError, OSError, TimeoutError, ValueError)


def next_index(old: int, new: int) -> int:
    """Consul's rule: an index that goes backwards means start over (re-list)."""
    return 0 if new < old or new <= 0 else new


def backoff(attempt: int) -> float:
    """Jittered exponential backoff: 0.5 s doubling to 10 s, +-25 %."""
    return float(min(10.0, 0.5 * 2.0**attempt) * random.uniform(0.75, 1.25))


class ConsulRegistry(Registry):
    """A Consul agent (or server) and the datacenters it can answer for."""

    def __init__(
        self, settings: ConsulRegistrySettings, metrics: Metrics, env: Mapping[str, str]
    ) -> None:
        self.name = settings.name
        self._settings = settings
        self._metrics = metrics
        self._env = env
        self._options = ConsulOptions(
            registry=settings.name,
            namespace=settings.namespace,
            host_template=settings.host_template,
            default_protocol=settings.default_protocol,
            include_warning=settings.include_warning,
            endpoints_mode=settings.endpoints,
        )
        self._client: consul.aio.Consul | None = None
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._dc_tasks: list[asyncio.Task[None]] = []
        self._instances: dict[tuple[str, str], list[ConsulInstance]] = {}
        self._problems: dict[tuple[str, str], list[Problem]] = {}
        self._services: dict[str, list[Service]] = {}
        self._listed: set[str] = set()  # datacenters whose service list arrived
        self._failing: set[tuple[str, str]] = set()
        self._reported: set[str] = set()
        self._datacenters: list[str] = []
        self._status = Status.STARTING
        self._detail = "connecting"
        self._view = View(settings.name)
        self._on_change: OnChange = lambda: None
        self.timeouts = 0
        self._batch: asyncio.TimerHandle | None = None
        self._warned_limit = False

    def view(self) -> View:
        return self._view

    def _connect(self) -> consul.aio.Consul:
        url = urlsplit(self._settings.address)
        tls = self._settings.tls
        verify: bool | str = True
        cert: tuple[str, str] | None = None
        if tls is not None:
            verify = str(tls.ca_file) if tls.ca_file else tls.verify
            if tls.cert_file and tls.key_file:
                cert = (str(tls.cert_file), str(tls.key_file))
        token = self._settings.token.resolve(self._env) if self._settings.token else None
        return consul.aio.Consul(
            # aiohttp's default pool (100) would park the 101st service's first query behind
            # others' 30 s long polls
            connections_limit=self._settings.max_connections,
            host=url.hostname or "127.0.0.1",
            port=url.port or (443 if url.scheme == "https" else 8500),
            scheme=url.scheme,
            token=token or None,
            verify=verify,
            cert=cert,
        )

    async def start(self, on_change: OnChange) -> None:
        self._on_change = on_change
        self._client = self._connect()
        self._dc_tasks.append(asyncio.create_task(self._run(), name=f"consul-{self.name}"))

    async def stop(self) -> None:
        if self._batch is not None:
            self._batch.cancel()
        tasks = [*self._dc_tasks, *self._tasks.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.http._session.close()

    async def _call(self, coroutine: Any) -> Any:
        """One blocking query, cut if it outlives wait + margin."""
        try:
            async with asyncio.timeout(self._settings.wait * 1.125 + TIMEOUT_MARGIN):
                return await coroutine
        except TimeoutError:
            self.timeouts += 1
            self._metrics.registry_errors.labels(self.name, "timeout").inc()
            raise

    async def _run(self) -> None:
        assert self._client is not None
        attempt = 0
        while not self._datacenters:
            try:
                if self._settings.datacenters:
                    self._datacenters = list(self._settings.datacenters)
                else:
                    # py-consul's agent.self() sends no ACL token; ask with our headers
                    info = await self._call(
                        self._client.http.get(
                            CB.json(),
                            "/v1/agent/self",
                            headers=self._client.prepare_headers(),
                        )
                    )
                    self._datacenters = [info["Config"]["Datacenter"]]
            except ERRORS as err:
                self._degrade(f"cannot reach Consul at {self._settings.address}: {err!r}")
                await asyncio.sleep(backoff(attempt))
                attempt += 1
        for dc in self._datacenters[1:]:
            self._dc_tasks.append(asyncio.create_task(self._watch_catalog(dc)))
        await self._watch_catalog(self._datacenters[0])

    def _wanted(self, name: str, tags: list[str]) -> bool:
        s = self._settings
        if not any(fnmatch.fnmatchcase(name, p) for p in s.services):
            return False
        if any(fnmatch.fnmatchcase(name, p) for p in s.exclude):
            return False
        return all(t in tags for t in s.tags)

    async def _watch_catalog(self, dc: str) -> None:
        assert self._client is not None
        index, attempt = 0, 0
        while True:
            try:
                new, services = await self._call(
                    self._client.catalog.services(
                        index=str(index) if index else None,
                        wait=f"{int(self._settings.wait)}s",
                        dc=dc,
                    )
                )
            except ERRORS as err:
                self._fail(dc, "", err)
                await asyncio.sleep(backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            self._recover(dc, "")
            index = next_index(index, int(new or 0))
            wanted = {
                n for n, tags in (services or {}).items() if self._wanted(n, list(tags or []))
            }
            for key in [k for k in self._tasks if k[0] == dc and k[1] not in wanted]:
                self._tasks.pop(key).cancel()
                self._instances.pop(key, None)
                self._problems.pop(key, None)
                self._rebuild(key[1])
            watched = len(self._tasks) + len([n for n in wanted if (dc, n) not in self._tasks])
            if watched > self._settings.max_connections - 8 and not self._warned_limit:
                self._warned_limit = True
                log.warning(
                    "registry=%s watches %d services but max_connections is %d; raise it (and "
                    "Consul's limits.http_max_conns_per_client, default 200) or filter services",
                    self.name,
                    watched,
                    self._settings.max_connections,
                )
            for name in sorted(wanted):
                if (dc, name) not in self._tasks:
                    self._tasks[(dc, name)] = asyncio.create_task(
                        self._watch_service(dc, name), name=f"consul-{dc}-{name}"
                    )
            self._listed.add(dc)
            self._publish()

    async def _watch_service(self, dc: str, name: str) -> None:
        assert self._client is not None
        index, attempt = 0, 0
        while True:
            try:
                new, entries = await self._call(
                    self._client.health.service(
                        name,
                        index=str(index) if index else None,
                        wait=f"{int(self._settings.wait)}s",
                        dc=dc,
                    )
                )
            except ERRORS as err:
                self._fail(dc, name, err)
                await asyncio.sleep(backoff(attempt))
                attempt += 1
                continue
            attempt = 0
            self._recover(dc, name)
            new_index = int(new or 0)
            if new_index == index and (dc, name) in self._instances:
                continue  # the wait ran out with no change
            index = next_index(index, new_index)
            instances, problems = parse_health(name, dc, entries or [], self._options)
            for problem in problems:
                if problem.subject not in self._reported:
                    self._reported.add(problem.subject)
                    log.warning(
                        "skipped record registry=%s subject=%s: %s",
                        self.name,
                        problem.subject,
                        problem.message,
                    )
                    self._metrics.skipped_records.labels(self.name, "bad-entry").inc()
            self._instances[(dc, name)] = instances
            self._problems[(dc, name)] = problems
            self._rebuild(name)
            self._publish()

    def _rebuild(self, name: str) -> None:
        per_dc = {dc: self._instances[(dc, n)] for dc, n in self._instances if n == name}
        if per_dc:
            self._services[name] = build_services(self._options, name, per_dc)
        else:
            self._services.pop(name, None)

    def _fail(self, dc: str, name: str, err: BaseException) -> None:
        if not isinstance(err, TimeoutError):
            self._metrics.registry_errors.labels(self.name, "error").inc()
        first = (dc, name) not in self._failing
        self._failing.add((dc, name))
        if first:
            what = f"service {name!r}" if name else "service list"
            self._degrade(f"{what} in {dc}: {err!r}; serving the last known view")

    def _recover(self, dc: str, name: str) -> None:
        self._failing.discard((dc, name))
        if not self._failing and self._status is Status.DEGRADED:
            log.info("registry recovered registry=%s", self.name)
            self._set(Status.READY if self._synced() else Status.STARTING, "")

    def _degrade(self, detail: str) -> None:
        if self._status is not Status.DEGRADED:
            log.warning("registry degraded registry=%s: %s", self.name, detail)
        self._set(Status.DEGRADED, detail)

    def _set(self, status: Status, detail: str) -> None:
        self._status, self._detail = status, detail
        self._publish()

    def _synced(self) -> bool:
        """Every datacenter listed and every wanted service's health fetched once."""
        return (
            bool(self._datacenters)
            and self._listed >= set(self._datacenters)
            and all(key in self._instances for key in self._tasks)
        )

    def _publish(self) -> None:
        """Publish a new view. While the first listing is still arriving (one health answer
        per service), views are coalesced to one per LISTING_BATCH seconds, so syncing N
        services costs O(N) view builds at most N/batch times, not N times."""
        if self._view.synced or self._synced():
            self._publish_now()
        elif self._batch is None:
            loop = asyncio.get_running_loop()
            self._batch = loop.call_later(LISTING_BATCH, self._publish_now)

    def _publish_now(self) -> None:
        if self._batch is not None:
            self._batch.cancel()
            self._batch = None
        synced = self._view.synced or self._synced()
        if synced and self._status is Status.STARTING:
            self._status, self._detail = Status.READY, ""
        services = [s for group in self._services.values() for s in group]
        problems = [p for ps in self._problems.values() for p in ps]
        self._view = View(
            registry=self.name,
            services=tuple(services),
            synced=synced,
            status=self._status,
            detail=self._detail,
            problems=tuple(problems),
        )
        self._on_change()
