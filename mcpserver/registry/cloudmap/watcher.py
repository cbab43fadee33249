"""Keeps an AWS Cloud Map registry's view current by polling, as cheaply as Cloud Map allows.

Cloud Map pushes nothing. One supervised loop does, every `poll_interval`:

- every `list_interval`: ListNamespaces, then ListServices per watched namespace (paginated,
  filtered by namespace). These throttle, hence their own, longer interval;
- per service, DiscoverInstancesRevision, a cheap call whose answer changes whenever the
  service's instances do; DiscoverInstances (MaxResults 1000, HealthStatus filter) only when
  it changed, or for a service not read yet;
- every `reconcile_interval`, DiscoverInstances for every service whatever its revision:
  a revision need not move when only an instance's health changes.

A service that answers ServiceNotFound is gone (deleted between the listing and the call, or
listed by a server that ignored the namespace filter): it is dropped, and its id, which Cloud
Map never reuses, is not asked for again. A failed call keeps the last view of what it was
for (DEGRADED, naming the call and AWS's error code); throttling, and any failure, stretches
the next pause with jittered exponential backoff (up to a minute) until a round succeeds.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from typing import Any

from mcpserver.backoff import backoff
from mcpserver.metrics import Metrics
from mcpserver.registry.base import Registry, Troubles
from mcpserver.registry.cloudmap.client import CloudMapClient, CloudMapError, ServiceInfo
from mcpserver.registry.cloudmap.config import CloudMapRegistrySettings
from mcpserver.registry.cloudmap.parser import (
    CloudMapOptions,
    ServiceKey,
    convert,
    health_filter,
)
from mcpserver.registry.labels import LabelFilter

log = logging.getLogger("mcpserver.registry.cloudmap")

BACKOFF_CAP = 60.0
LISTING = "listing"  # the trouble scope of ListNamespaces/ListServices and the client itself


class CloudMapRegistry(Registry):
    """The Cloud Map namespaces of one AWS account and region."""

    def __init__(
        self,
        settings: CloudMapRegistrySettings,
        metrics: Metrics,
        client: CloudMapClient | None = None,
    ) -> None:
        super().__init__(settings.name, metrics, keep_when_empty=settings.keep_when_empty)
        self._settings = settings
        self._client = client if client is not None else CloudMapClient(settings)
        self._labels = LabelFilter(settings.name, settings.labels, metrics)
        self._options = self._options_for("")
        self._listed: dict[ServiceKey, ServiceInfo] = {}
        self._listed_once = False
        self._absent: set[tuple[str, str]] = set()  # (namespace id, service id): not there
        self._namespace_ids: dict[str, str] = {}  # watched namespaces: name -> id
        self._revisions: dict[ServiceKey, int] = {}
        self._raw: dict[ServiceKey, list[dict[str, Any]]] = {}  # the last DiscoverInstances answer
        # what is wrong, per scope (LISTING or a service), newest last: (kind, detail)
        self._troubles = Troubles(self)
        self.rounds = 0

    @property
    def client(self) -> CloudMapClient:
        return self._client

    def _options_for(self, region: str) -> CloudMapOptions:
        s = self._settings
        return CloudMapOptions(
            registry=s.name,
            namespace=s.namespace,
            host_template=s.host_template,
            default_protocol=s.default_protocol,
            default_port=s.default_port,
            protocol_attribute=s.protocol_attribute,
            port_attribute=s.port_attribute,
            include_unknown=s.include_unknown,
            endpoints_mode=s.endpoints,
            region=region,
            labels=self._labels,
        )

    # ---------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        self.spawn("poll", self._poll)

    async def close(self) -> None:
        self._client.close()

    def _where(self) -> str:
        s = self._settings
        where = f"region {self._client.region or s.region or '(from the environment)'}"
        return f"{where}, endpoint {s.endpoint_url}" if s.endpoint_url else where

    # -------------------------------------------------------------- the loop

    async def _poll(self) -> None:
        """Poll forever; a restart by the supervisor starts with a full listing and read."""
        loop = asyncio.get_running_loop()
        s = self._settings
        attempt = 0
        next_list = next_full = 0.0
        self._revisions.clear()
        while True:
            began = loop.time()
            failed = False
            try:
                await self._client.connect()
                self._options = self._options_for(self._client.region)
                if began >= next_list:
                    await self._list()
                    next_list = began + s.list_interval
                    if self._troubles.kind(LISTING) is not None and self.view().synced:
                        # nothing registers again in Cloud Map (its grace is 0 unless set)
                        self.came_back("Cloud Map answers again")
                    self._troubles.clear(LISTING)
            except CloudMapError as err:
                self._fail(LISTING, err, f"cannot list Cloud Map services ({self._where()})")
                failed = True
            if self._listed_once:
                full = began >= next_full
                failed = await self._refresh(full) or failed
                if full:
                    next_full = began + s.reconcile_interval
            self.rounds += 1
            self._publish()
            if failed:
                delay = backoff(
                    attempt, first=s.poll_interval, cap=max(BACKOFF_CAP, s.poll_interval)
                )
                attempt += 1
            else:
                delay, attempt = s.poll_interval, 0
            await asyncio.sleep(delay)

    async def _list(self) -> None:
        """The services to watch, from ListNamespaces and ListServices."""
        wanted = self._settings.namespaces
        namespaces = [
            n for n in await self._client.namespaces() if wanted == ["*"] or n.name in wanted
        ]
        self._namespace_ids = {n.name: n.id for n in namespaces}
        answers = await asyncio.gather(*(self._client.services(n.id) for n in namespaces))
        patterns = self._settings.services
        listed: dict[ServiceKey, ServiceInfo] = {}
        seen: set[tuple[str, str]] = set()
        for namespace, services in zip(namespaces, answers, strict=True):
            for service in services:
                seen.add((namespace.id, service.id))
                if (namespace.id, service.id) in self._absent:
                    continue
                if not any(fnmatch.fnmatchcase(service.name, p) for p in patterns):
                    continue
                listed[ServiceKey(namespace.name, service.name)] = service
        self._absent &= seen  # forget ids no longer listed at all
        for key in [k for k in self._listed if k not in listed]:
            self._drop(key)
        for key, service in listed.items():
            old = self._listed.get(key)
            if old is not None and old.id != service.id:  # deleted and created again
                self._drop(key)
        self._listed = listed
        self._listed_once = True

    async def _refresh(self, full: bool) -> bool:
        """Check every listed service; True if any call failed."""
        keys = sorted(self._listed)
        results = await asyncio.gather(*(self._check(key, full) for key in keys))
        return any(results)

    async def _check(self, key: ServiceKey, full: bool) -> bool:
        """One service: its revision, and its instances if that moved (or `full`). True if a
        call failed."""
        info = self._listed[key]
        try:
            revision = await self._client.revision(key.namespace, key.name)
            if not full and self._revisions.get(key) == revision:
                self._troubles.clear(str(key))
                return False
            found = await self._client.discover(
                key.namespace, key.name, health_filter(self._options)
            )
        except CloudMapError as err:
            if err.kind == "not-found":
                if self._listed.get(key) is info:
                    self._absent.add((self._namespace_ids.get(key.namespace, ""), info.id))
                    self._listed.pop(key)
                    self._drop(key)
                self._troubles.clear(str(key))
                return False
            self._revisions.pop(key, None)  # read it whole next time
            self._fail(str(key), err, f"service {key}")
            return True
        if self._listed.get(key) is not info:
            return False  # dropped while we asked
        self._revisions[key] = revision
        self._troubles.clear(str(key))
        if key in self._raw and self._raw[key] == found.instances:
            return False
        # converted in a thread, as the static registry parses: a service of 1,000
        # instances must not stall every gRPC stream on the loop while it is built
        services, problems = await asyncio.to_thread(
            convert, self._options, key, found.instances, info.created
        )
        if self._listed.get(key) is not info:
            return False  # dropped while we converted
        self._raw[key] = found.instances
        # listed: with keep_when_empty, a service without served instances keeps its host,
        # ports and address for istiod
        self.table.replace(key, services, problems)
        return False

    # ------------------------------------------------------------- the services

    def _drop(self, key: ServiceKey) -> None:
        self._revisions.pop(key, None)
        self._raw.pop(key, None)
        self._troubles.clear(str(key))
        self.table.drop(key)

    def _synced(self) -> bool:
        return self._listed_once and all(k in self._revisions for k in self._listed)

    def _publish(self) -> None:
        self.flush(synced=self.view().synced or self._synced())

    # ------------------------------------------------------------------ status

    def _fail(self, scope: str, err: CloudMapError, what: str) -> None:
        self._metrics.registry_errors.labels(self.name, err.kind).inc()
        detail = f"{what}: {err}; serving the last known view"
        if err.kind == "credentials":
            detail = f"{what}: credentials refused or missing: {err}; serving the last known view"
        self._troubles.set(scope, detail)
