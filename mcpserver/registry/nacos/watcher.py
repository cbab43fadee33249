"""Keeps a Nacos registry's view current, on the event loop.

One supervised task per namespace (Nacos' pushes do not say which namespace they belong to,
so, like the Java client, we keep one connection per namespace):

- `api: grpc` (Nacos 2.x/3.x): connect (client.py), list every configured group's services
  page by page (`ServiceListRequest`: Nacos never pushes the service list, so it is polled
  every `list_interval`), subscribe to each new service (`SubscribeServiceRequest`, whose reply
  is the first instance list) and apply every `NotifySubscriberRequest` push. A push identical
  to what we hold (Nacos sends one right after each subscribe reply) changes nothing. Every
  `refresh_interval` each service is also re-read (`ServiceQueryRequest`), as Nacos' own
  client's update task does: a lost push (or one a server never sends: r-nacos does not push
  an instance's recovery by heartbeat) is made up for.
- `api: http` (Nacos 1.x): every `poll_interval`, list the services and read each one's
  instances through the HTTP v1 API (http.py), giving the same resources as gRPC mode.

A service no longer listed is dropped (and unsubscribed). Dubbo's other categories
(`consumers:...`, `routers:...`, `configurators:...`) are not services and are never listed.
A lost connection, an unreachable server or a refused login keeps the last view (DEGRADED
with the reason) and is retried with jittered backoff that only a good listing resets (a
login is tried before a connection is opened, so a refused one costs one HTTP call per
attempt); an unreachable server moves the registry to the next of its `addresses`
(servers.py). A new connection re-lists and re-subscribes everything, and what is not
listed any more is dropped only then (full reconcile). A new connection after a lost one (or
an answer after failed polls) is a recovery (`Registry.came_back`): a restarted Nacos lost
every ephemeral instance whose client has not registered again yet, so protection holds
what the reconcile removes for `recovery_grace`, and its mass-removal rule after that.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import hashlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import grpc

from mcpserver.backoff import backoff
from mcpserver.failure import describe
from mcpserver.metrics import Metrics
from mcpserver.model import Problem
from mcpserver.registry.base import Registry, Troubles
from mcpserver.registry.dubbo.mapping import DubboOptions
from mcpserver.registry.labels import LabelFilter
from mcpserver.registry.nacos.auth import LoginError, TokenKeeper
from mcpserver.registry.nacos.client import (
    Connection,
    ConnectionLostError,
    NacosError,
    NacosUnauthorizedError,
)
from mcpserver.registry.nacos.config import NacosRegistrySettings
from mcpserver.registry.nacos.http import NacosHTTP
from mcpserver.registry.nacos.parser import (
    NacosOptions,
    ServiceKey,
    convert,
    dubbo_non_provider,
    hosts_of,
    service_names,
    split_name,
)
from mcpserver.registry.nacos.servers import Servers, server_failed

log = logging.getLogger("mcpserver.registry.nacos")

ALL_NAMESPACES = "*"
DISCOVERY = "(namespace list)"  # the trouble key of namespace discovery
ERROR_BACKOFF_CAP = 10.0  # a Nacos that comes back is noticed within ~10 s
KEEPALIVE = 5.0  # the Java client's health check interval on an idle connection
SUBSCRIBE_CONCURRENCY = 32  # subscribe requests in flight on one connection
FETCH_CONCURRENCY = 16  # HTTP instance-list requests in flight (api: http)
# What a failed call can raise; anything else is a bug, left to the supervisor.
ERRORS = (
    NacosError,
    ConnectionLostError,
    LoginError,
    grpc.aio.AioRpcError,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    ValueError,
)

ALL = "*"  # groups: every group

Seen = tuple[int, bytes]
"""What one Nacos service's Services were converted from: its lastRefTime and a digest of
its instance list (an identical one changes nothing); the Services are in the table."""

Fetch = Callable[[str, str, int], Awaitable[Mapping[str, Any]]]
"""(namespace, group, page number) -> one page of the service list."""


class NacosRegistry(Registry):
    """A Nacos server (or cluster address) and the namespaces and groups to serve."""

    def __init__(
        self, settings: NacosRegistrySettings, metrics: Metrics, env: Mapping[str, str]
    ) -> None:
        super().__init__(settings.name, metrics, keep_when_empty=settings.keep_when_empty)
        self._settings = settings
        self._env = env
        labels = LabelFilter(settings.name, settings.labels, metrics)
        self._options = NacosOptions(
            registry=settings.name,
            namespace=settings.namespace,
            host_template=settings.host_template,
            host_metadata=settings.host_metadata,
            default_protocol=settings.default_protocol.lower(),
            include_unhealthy=settings.include_unhealthy,
            endpoints_mode=settings.endpoints,
            dubbo=DubboOptions(
                registry=settings.name,
                namespace=settings.namespace,
                host_template=settings.dubbo_host_template,
                application_host_template=settings.application_host_template,
                label_params=tuple(settings.label_params),
                endpoints_mode=settings.endpoints,
                default_protocol=settings.default_protocol.lower(),
                labels=labels,
            ),
            labels=labels,
        )
        self._servers = Servers(settings.servers(), settings.name)
        self._keeper: TokenKeeper | None = None
        self._ssl: ssl.SSLContext | None = None
        self._http: NacosHTTP | None = None  # made in open(), with the login and TLS
        self._seen: dict[ServiceKey, Seen] = {}
        self._subscribed: dict[str, set[ServiceKey]] = {}
        self._listed: set[str] = set()  # namespaces listed (and their services read) once
        self._namespaces: dict[str, asyncio.Task[None]] = {}  # followed namespace -> task
        self._discovered = False  # namespaces: ["*"] has listed the namespaces once
        self._troubles = Troubles(self)  # by namespace
        self.pushes = 0
        self.applied = 0

    # ---------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        s = self._settings
        if s.tls is not None:
            self._ssl = ssl.create_default_context(
                cafile=str(s.tls.ca_file) if s.tls.ca_file else None
            )
            if s.tls.cert_file and s.tls.key_file:
                self._ssl.load_cert_chain(str(s.tls.cert_file), str(s.tls.key_file))
        if s.auth is not None:
            self._keeper = TokenKeeper(
                lambda: self._servers.current,
                s.auth.username,
                s.auth.password.resolve(self._env),
                ssl_context=self._ssl,
                timeout=s.request_timeout,
            )
        self._http = NacosHTTP(
            self._servers,
            self._keeper,
            self._ssl,
            timeout=s.request_timeout,
            page_size=s.page_size,
        )
        if s.namespaces == [ALL_NAMESPACES]:
            self.spawn("namespace discovery", self._discover)
            return
        for namespace in s.namespaces:
            self._follow(namespace)

    def _follow(self, namespace: str) -> None:
        run = self._grpc_namespace if self._settings.api == "grpc" else self._http_namespace
        self._namespaces[namespace] = self.spawn(
            f"namespace {namespace}", functools.partial(run, namespace)
        )

    # ------------------------------------------------------- namespaces: ["*"]

    async def _discover(self) -> None:
        """Every namespace the server has, listed every list_interval (Nacos pushes no
        namespace list): a new one is followed, a deleted one stops being followed and
        takes its services with it. Through the console API of Nacos 1.x/2.x (r-nacos has
        it too); Nacos 3 answers it 410, and the registry says so."""
        while True:
            try:
                found = await self._api.namespaces()
            except ERRORS as err:
                self._fail(DISCOVERY, err)
            else:
                self._troubles.clear(DISCOVERY)
                self._follow_namespaces(found)
            await asyncio.sleep(self._settings.list_interval)

    def _follow_namespaces(self, found: set[str]) -> None:
        for namespace in sorted(found - self._namespaces.keys()):
            log.info("following namespace registry=%s namespace=%s", self.name, namespace)
            self._follow(namespace)
        for namespace in sorted(self._namespaces.keys() - found):
            log.info("namespace gone registry=%s namespace=%s", self.name, namespace)
            self._namespaces.pop(namespace).cancel()
            self._listed.discard(namespace)
            self._subscribed.pop(namespace, None)
            self._troubles.clear(namespace)
            self._reconcile(namespace, set())
            self._publish()
        if not self._discovered:
            self._discovered = True
            self._publish()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def _api(self) -> NacosHTTP:
        assert self._http is not None, "open() makes the HTTP client"
        return self._http

    async def _token(self) -> str:
        return await self._keeper.token() if self._keeper is not None else ""

    def _credentials(self) -> grpc.ChannelCredentials | None:
        tls = self._settings.tls
        if tls is None:
            return None

        def read(path: object) -> bytes | None:
            return open(str(path), "rb").read() if path else None

        return grpc.ssl_channel_credentials(
            read(tls.ca_file), read(tls.key_file), read(tls.cert_file)
        )

    # -------------------------------------------------------------- gRPC (2.x/3.x)

    async def _grpc_namespace(self, namespace: str) -> None:
        """Connect, follow, and on any failure keep the view, back off and start over."""
        attempt = 0

        def listed() -> None:  # a good listing: the next failure starts the backoff over
            nonlocal attempt
            attempt = 0

        while True:
            url = self._servers.current
            connection = Connection(
                self._settings.grpc_target(url),
                namespace,
                functools.partial(self._pushed, namespace),
                token=self._token if self._keeper is not None else None,
                credentials=self._credentials(),
                timeout=self._settings.request_timeout,
            )
            try:
                # a login first: a refused one opens no gRPC connection (which would be set
                # up, registered and dropped again at every attempt)
                await self._token()
                await connection.open()
                if namespace in self._listed:
                    # a new connection after a lost one: a restarted Nacos lost every
                    # ephemeral instance its clients have not registered again yet
                    self.came_back(f"reconnected to Nacos (namespace {namespace})")
                await self._grpc_session(namespace, connection, listed)
            except ERRORS as err:
                if server_failed(err):
                    self._servers.failed(url, describe(err))
                self._fail(namespace, err, url)
            finally:
                await connection.close()
            await asyncio.sleep(backoff(attempt, cap=ERROR_BACKOFF_CAP))
            attempt += 1

    async def _grpc_session(
        self, namespace: str, connection: Connection, listed: Callable[[], None]
    ) -> None:
        """List, subscribe, reconcile (calling `listed()` after each); again every
        list_interval, until the connection is lost (ConnectionLostError) or a request
        fails."""
        subscribed: set[ServiceKey] = set()
        self._subscribed[namespace] = subscribed
        keepalive = asyncio.create_task(self._keepalive(connection))
        lost = asyncio.create_task(connection.lost())
        loop = asyncio.get_running_loop()
        refresh_at = loop.time() + self._settings.refresh_interval

        async def page(ns: str, group: str, number: int) -> Mapping[str, Any]:
            return await connection.request(
                "ServiceListRequest",
                {
                    "module": "naming",
                    "namespace": ns,
                    "groupName": group,
                    "serviceName": "",
                    "pageNo": number,
                    "pageSize": self._settings.page_size,
                    "selector": "",
                },
            )

        try:
            while True:
                keys = await self._list(namespace, page)
                new = sorted(keys - subscribed)
                subscribed |= set(new)  # pushes for these are welcome from now on
                await self._subscribe_all(connection, new)
                if loop.time() >= refresh_at:
                    refresh_at = loop.time() + self._settings.refresh_interval
                    await self._query_all(connection, sorted(subscribed & keys - set(new)))
                for key in sorted(subscribed - keys):
                    subscribed.discard(key)
                    await self._unsubscribe(connection, key)
                self._reconcile(namespace, keys)
                self._listed.add(namespace)
                self._troubles.clear(namespace)
                listed()
                self._publish_if_changed()
                await asyncio.wait(
                    {keepalive, lost},
                    timeout=self._settings.list_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if lost.done():
                    raise ConnectionLostError(lost.result())
                if keepalive.done():
                    keepalive.result()  # raises what ended it
        finally:
            keepalive.cancel()
            lost.cancel()

    async def _keepalive(self, connection: Connection) -> None:
        """A health check every KEEPALIVE seconds; a server that stopped answering (without
        closing the connection) ends the session."""
        while True:
            await asyncio.sleep(KEEPALIVE)
            try:
                await connection.request("HealthCheckRequest", {"module": "internal"}, token=False)
            except (NacosError, grpc.aio.AioRpcError, TimeoutError) as err:
                raise ConnectionLostError(f"health check failed: {describe(err)}") from None

    async def _subscribe_all(self, connection: Connection, keys: list[ServiceKey]) -> None:
        """Subscribe to these services, SUBSCRIBE_CONCURRENCY at a time; each reply is the
        service's instance list."""

        async def subscribe(key: ServiceKey) -> None:
            reply = await connection.request("SubscribeServiceRequest", _subscription(key))
            self._apply(key, reply.get("serviceInfo"))

        await run_bounded(keys, subscribe, SUBSCRIBE_CONCURRENCY)

    async def _query_all(self, connection: Connection, keys: list[ServiceKey]) -> None:
        """Re-read these services' instances (`ServiceQueryRequest`: no subscription, no
        push): a push that was lost, or never sent, is made up for."""

        async def query(key: ServiceKey) -> None:
            body = {
                "module": "naming",
                "namespace": key.namespace,
                "groupName": key.group,
                "serviceName": key.name,
                "cluster": "",
                "healthyOnly": False,
                "udpPort": 0,
            }
            reply = await connection.request("ServiceQueryRequest", body)
            if self._apply(key, reply.get("serviceInfo")):
                self._publish()

        await run_bounded(keys, query, SUBSCRIBE_CONCURRENCY)

    async def _unsubscribe(self, connection: Connection, key: ServiceKey) -> None:
        body = {**_subscription(key), "subscribe": False}
        try:
            await connection.request("SubscribeServiceRequest", body)
        except NacosError as err:  # the service is gone anyway
            log.debug("unsubscribe %s failed: %s", key, err)

    def _pushed(self, namespace: str, info: Mapping[str, Any]) -> None:
        """A NotifySubscriberRequest: apply it if it is a service we subscribed to."""
        self.pushes += 1
        raw = info.get("name")
        group = info.get("groupName")
        if not isinstance(raw, str):
            return
        group_name, name = split_name(raw, group if isinstance(group, str) else "")
        key = ServiceKey(namespace, group_name, name)
        if key in self._subscribed.get(namespace, ()) and self._apply(key, info):
            self._publish()

    # ---------------------------------------------------------------- HTTP (1.x)

    async def _http_namespace(self, namespace: str) -> None:
        """List and read everything every poll_interval; failures keep the view."""
        attempt = 0
        while True:
            try:
                keys = await self._list(namespace, self._api.service_page)
                await self._fetch_all(keys)
                self._reconcile(namespace, keys)
                if attempt and namespace in self._listed:
                    self.came_back(f"Nacos answers again (namespace {namespace})")
                self._listed.add(namespace)
                self._troubles.clear(namespace)
                self._publish_if_changed()
                attempt = 0
                delay = self._settings.poll_interval
            except ERRORS as err:
                self._fail(namespace, err)
                delay = backoff(attempt, cap=ERROR_BACKOFF_CAP)
                attempt += 1
            await asyncio.sleep(delay)

    async def _fetch_all(self, keys: set[ServiceKey]) -> None:
        async def fetch(key: ServiceKey) -> None:
            self._apply(key, await self._api.instances(key))

        await run_bounded(sorted(keys), fetch, FETCH_CONCURRENCY)

    # ------------------------------------------------------------------ shared

    def _wanted(self, name: str) -> bool:
        if dubbo_non_provider(name):
            return False  # Dubbo's consumers, routers...: not services (left out silently)
        return any(fnmatch.fnmatchcase(name, p) for p in self._settings.services)

    async def _list(self, namespace: str, fetch: Fetch) -> set[ServiceKey]:
        """Every wanted service of the configured groups, page by page."""
        keys: set[ServiceKey] = set()
        size = self._settings.page_size
        groups = {g for g in self._settings.groups if g != ALL}
        if ALL in self._settings.groups:
            groups |= await self._api.groups(namespace)
        for group in sorted(groups):
            number = 1
            while True:
                body = await fetch(namespace, group, number)
                names = service_names(body, group)
                keys.update(ServiceKey(namespace, g, n) for g, n in names if self._wanted(n))
                count = body.get("count")
                total = count if isinstance(count, int) else 0
                if len(names) < size or number * size >= total:
                    break
                number += 1
        return keys

    def _apply(self, key: ServiceKey, info: object) -> bool:
        """A service's instance list (subscribe reply, push or HTTP answer): convert it,
        unless it is what we already hold or older. True if the view must change."""
        try:
            hosts = hosts_of(info)
        except ValueError as err:
            problem = Problem(self.name, str(key), str(err), "bad-service-info")
            self._seen[key] = (0, b"")
            self.table.replace(key, (), [problem], listed=False)
            return True
        assert isinstance(info, Mapping)
        ref = info.get("lastRefTime")
        ref_time = ref if isinstance(ref, int) and not isinstance(ref, bool) else 0
        digest = hashlib.blake2b(
            json.dumps(hosts, sort_keys=True, default=str).encode(), digest_size=16
        ).digest()
        old = self._seen.get(key)
        if old is not None and (old[1] == digest or (ref_time and ref_time < old[0])):
            return False
        services, problems = convert(self._options, key, info)
        # listed: with keep_when_empty, a service without served instances keeps its
        # hosts, ports and addresses for istiod
        self._seen[key] = (ref_time, digest)
        self.table.replace(key, services, problems)
        self.applied += 1
        return True

    def _reconcile(self, namespace: str, keys: set[ServiceKey]) -> None:
        for key in [k for k in self._seen if k.namespace == namespace and k not in keys]:
            del self._seen[key]
            self.table.drop(key)

    # ------------------------------------------------------------------ status

    def _fail(self, namespace: str, err: BaseException, url: str | None = None) -> None:
        kind = "error"
        if isinstance(err, NacosUnauthorizedError | LoginError):
            kind = "unauthorized"
            if self._keeper is not None and isinstance(err, NacosUnauthorizedError):
                self._keeper.forget()
        self._metrics.registry_errors.labels(self.name, kind).inc()
        s = self._settings
        url = url or self._servers.current
        if isinstance(err, LoginError):
            where = ""  # the message says where it logged in
        elif (
            s.api == "grpc"
            and namespace != DISCOVERY
            and getattr(err, "via", "gRPC") == "gRPC"
            and not isinstance(err, aiohttp.ClientError)
        ):
            where = (
                f"Nacos gRPC at {s.grpc_target(url)} (the HTTP port + 1000 unless grpc_port "
                "is set): "
            )
        else:
            where = f"Nacos HTTP API at {url}: "
        if isinstance(err, grpc.aio.AioRpcError):
            what = f"{err.code().name}: {err.details() or ''}".strip()
        else:
            what = describe(err)
        # With several servers, each failing in turn is one trouble, not a new reason to
        # log every time the next server fails the same way.
        same = None
        if len(self._servers.urls) > 1:
            code = err.code().name if isinstance(err, grpc.aio.AioRpcError) else ""
            same = f"{type(err).__name__}:{code}"
        self._troubles.set(
            namespace, f"namespace {namespace}: {where}{what}; {self.keeping()}", kind=same
        )

    # --------------------------------------------------------------- publishing

    def _synced(self) -> bool:
        if self._settings.namespaces == [ALL_NAMESPACES]:
            return self._discovered and self._listed >= self._namespaces.keys()
        return self._listed >= set(self._settings.namespaces)

    def _publish(self) -> None:
        """Publish a new view; while the first listing arrives, at most one per
        LISTING_BATCH seconds."""
        self.flush(synced=self.view().synced or self._synced(), batch=True)

    def _publish_if_changed(self) -> None:
        """After a listing: a new view only if something changed (or the first listing
        just completed), not one per `list_interval`."""
        if self.table.pending() or not self.view().synced:
            self._publish()


def _subscription(key: ServiceKey) -> dict[str, Any]:
    return {
        "module": "naming",
        "namespace": key.namespace,
        "groupName": key.group,
        "serviceName": key.name,
        "subscribe": True,
        "clusters": "",
    }


async def run_bounded(
    items: list[ServiceKey], work: Callable[[ServiceKey], Awaitable[None]], limit: int
) -> None:
    """`work(item)` for every item, at most `limit` at once; the first failure cancels the
    rest and is raised as itself (not as an ExceptionGroup: callers catch what one call
    raises)."""
    queue = iter(items)

    async def worker() -> None:
        for item in queue:
            await work(item)

    tasks = [asyncio.create_task(worker()) for _ in range(min(limit, len(items)))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
