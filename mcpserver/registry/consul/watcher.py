"""Keeps a Consul registry's view current with blocking queries, on the event loop.

One loop, `_follow()`, long-polls one Consul endpoint: per datacenter the service list
(`/v1/catalog/services`), per (datacenter, service) `/v1/health/service/<name>`. Each runs
as a supervised task (`Registry.spawn`), so a loop that dies of a bug is restarted (with a
full re-list) instead of freezing its service. Every call is cut at `wait*1.125+5s`, so a
connection that silently dies is retried (python-consul2's missing timeout is why we use
py-consul); errors back off with jitter; a Consul index that goes backwards (a restarted agent
or server) or is not positive resets to a full re-list, a consistent read after a restart, so
a leader that has not yet applied its log cannot answer an older state. While Consul is
unreachable the last view stays served (DEGRADED); the first answer after failed calls is a
recovery (`Registry.came_back`): protection holds removals for `recovery_grace` while agents'
anti-entropy syncs their services back into a catalog that lost them.

Consul answers a list query with a token that cannot read everything by quietly leaving out
what it may not see, and says so only in the `X-Consul-Results-Filtered-By-ACLs` header. Such
an answer makes the registry DEGRADED (what the token cannot read looks deleted) but its data
still flows: the pipeline's protection against mass removal holds a mass removal.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import aiohttp
import consul

from mcpserver.backoff import backoff
from mcpserver.failure import describe
from mcpserver.metrics import Metrics
from mcpserver.model import Problem
from mcpserver.registry.base import Registry, Troubles
from mcpserver.registry.consul.client import (
    FILTERED,
    ConsulClient,
    ConsulHTTPError,
    Params,
    Reply,
    connect,
    cut_after,
    decode,
)
from mcpserver.registry.consul.config import ConsulRegistrySettings
from mcpserver.registry.consul.parser import (
    ConsulInstance,
    ConsulOptions,
    build_services,
    parse_health,
    service_host,
)
from mcpserver.registry.labels import LabelFilter

log = logging.getLogger("mcpserver.registry.consul")

T = TypeVar("T")

Key = tuple[str, str]
"""What one loop watches: (datacenter, service), service "" for the datacenter's service list;
("", "") is the agent, asked once for its datacenter."""

AGENT: Key = ("", "")
ERROR_BACKOFF_CAP = 10.0  # a Consul that comes back is noticed within ~10 s
# What a failed call can raise; anything else is a bug, left to the supervisor.
ERRORS = (
    consul.ConsulException,
    ConsulHTTPError,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    ValueError,
)


def next_index(old: int, new: int) -> int:
    """Consul's rule: an index that goes backwards, or is not positive, means start over
    (a full re-list with index 0)."""
    return 0 if new < old or new <= 0 else new


class RestoringError(Exception):
    """An answer of a Consul server still restoring its state (see `restoring`)."""


def restoring(asked: int, reply: Reply) -> bool:
    """Whether an answer comes from a Consul server restoring its state after a restart:
    its index went back (a blocking query woken by the restore), or a plain read (index 0)
    was answered without a known leader. Blocking queries that time out say "no known
    leader" in normal operation too (Consul 1.22), so that alone does not count for them."""
    return 0 < reply.index < asked or (asked == 0 and not reply.known_leader)


def service_list(body: object) -> dict[str, list[str]]:
    """`/v1/catalog/services`: {name: [tag, ...]}."""
    if not isinstance(body, dict):
        raise ValueError(f"service list is a {type(body).__name__}, not an object")
    return {
        str(name): [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []
        for name, tags in body.items()
    }


def health_entries(body: object) -> Sequence[object]:
    """`/v1/health/service/<name>`: a list of entries (parse_health checks each one)."""
    if not isinstance(body, list):
        raise ValueError(f"health answer is a {type(body).__name__}, not a list")
    return body


def agent_datacenter(body: object) -> str:
    """`/v1/agent/self`: the agent's own datacenter."""
    config = body.get("Config") if isinstance(body, dict) else None
    datacenter = config.get("Datacenter") if isinstance(config, dict) else None
    if not isinstance(datacenter, str) or not datacenter:
        raise ValueError("agent/self answer without Config.Datacenter")
    return datacenter


class ConsulRegistry(Registry):
    """A Consul agent (or server) and the datacenters it can answer for."""

    def __init__(
        self,
        settings: ConsulRegistrySettings,
        metrics: Metrics,
        env: Mapping[str, str],
        client: ConsulClient | None = None,
    ) -> None:
        """`client` replaces the py-consul client (tests); by default open() connects."""
        super().__init__(settings.name, metrics, keep_when_empty=settings.keep_when_empty)
        self._settings = settings
        self._env = env
        self._options = ConsulOptions(
            registry=settings.name,
            namespace=settings.namespace,
            host_template=settings.host_template,
            default_protocol=settings.default_protocol,
            include_warning=settings.include_warning,
            endpoints_mode=settings.endpoints,
            labels=LabelFilter(settings.name, settings.labels, metrics),
        )
        self._client = client
        self._wait = f"{int(settings.wait)}s"
        self._datacenters: list[str] = []
        self._watches: dict[Key, asyncio.Task[None]] = {}  # per-service loops
        self._instances: dict[Key, list[ConsulInstance]] = {}
        self._dcs: dict[str, set[str]] = {}  # service name -> datacenters with instances
        self._problems: dict[Key, list[Problem]] = {}
        self._listed: set[str] = set()  # datacenters whose service list arrived
        # what is wrong, per loop, newest last: (kind, detail); the registry is DEGRADED
        # while any loop has trouble, and says the newest
        self._troubles = Troubles(self)
        self._warned_limit = False
        self.timeouts = 0

    # ---------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        if self._client is None:
            self._client = connect(self._settings, self._env)
        if self._settings.datacenters:
            self._watch_datacenters(list(self._settings.datacenters))
        else:
            self.spawn("datacenter discovery", self._discover)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    async def _discover(self) -> None:
        """Ask the agent for its datacenter (py-consul's agent.self() sends no token: our
        transport call does)."""
        _, datacenter = await self._answer(AGENT, "/v1/agent/self", (), agent_datacenter)
        self._troubles.clear(AGENT)
        self._watch_datacenters([datacenter])

    def _watch_datacenters(self, datacenters: list[str]) -> None:
        self._datacenters = datacenters
        for dc in datacenters:
            self.spawn(f"service list in {dc}", functools.partial(self._watch_catalog, dc))

    # -------------------------------------------------------------- the loop

    async def _call(self, path: str, params: Params) -> Reply:
        """One query, cut if it outlives wait + margin."""
        assert self._client is not None, "open() connects first"
        try:
            async with asyncio.timeout(cut_after(self._settings.wait)):
                return await self._client.http.get(
                    decode, path, params=params, headers=self._client.prepare_headers()
                )
        except TimeoutError:
            self.timeouts += 1
            self._metrics.registry_errors.labels(self.name, "timeout").inc()
            raise

    async def _answer(
        self, key: Key, path: str, params: Params, shape: Callable[[object], T]
    ) -> tuple[Reply, T]:
        """Ask until Consul answers: each failed call (or malformed answer) marks `key`
        failing and backs off with jitter."""
        attempt = 0
        while True:
            try:
                reply = await self._call(path, params)
                return reply, shape(reply.body)
            except ERRORS as err:
                self._fail(key, err)
                await asyncio.sleep(backoff(attempt, cap=ERROR_BACKOFF_CAP))
                attempt += 1

    async def _follow(
        self, key: Key, path: str, shape: Callable[[object], T], apply: Callable[[T], None]
    ) -> None:
        """Long-poll one endpoint forever, applying each answer that differs from the last.

        Starts from index 0 (a full listing), so a restart by the supervisor re-lists."""
        dc = key[0]
        index, digest = 0, b""
        consistent = False  # the next listing must be a consistent read (see below)
        try:
            while True:
                params = [("dc", dc), ("wait", self._wait)]
                if index:
                    params.append(("index", str(index)))
                elif consistent:
                    params.append(("consistent", ""))
                reply, value = await self._answer(key, path, params, shape)
                if restoring(index, reply):
                    # A restarted Consul server wakes blocking queries while it restores its
                    # state, and answers from the store as it is then: empty, at index 1,
                    # without a known leader (seen with 1.22, once or twice per restart).
                    # Applied, that would deregister live services: asked again from 0.
                    # Then, with a leader elected but its raft log not yet all applied, a
                    # default read can still answer an older state (index 20 after 22, one
                    # live instance missing: seen in CI). A consistent read is refused
                    # ("Not ready to serve consistent reads") until the leader has applied
                    # its log (consul/agent/consul/rpc.go, consistentRead): the re-list is
                    # one, retried until Consul can answer it truly.
                    log.info(
                        "registry=%s ignoring an answer of a Consul restoring its state "
                        "for the %s (index %d after %d, known leader: %s)",
                        self.name, self._what(key), reply.index, index, reply.known_leader,
                    )  # fmt: skip
                    self._fail(key, RestoringError(f"Consul answered index {reply.index}"))
                    index, consistent = 0, True
                    await asyncio.sleep(backoff(0))
                    continue
                consistent = False
                self._answered(key, reply.filtered)
                index = next_index(index, reply.index)
                # Not the index alone: an ACL change alters what we may see without moving it.
                if reply.digest != digest:
                    digest = reply.digest
                    apply(value)
                if reply.index <= 0:
                    # Consul always sends a positive index; if one did not, every query would
                    # return at once: don't spin
                    await asyncio.sleep(backoff(0))
        except Exception as err:
            # A bug: the supervisor logs it, degrades and restarts us. Until this loop answers
            # again the registry is not healthy, even if other loops recover meanwhile.
            self._troubles.set(key, f"{self._what(key)}: {describe(err)}; restarting", "crash")
            raise

    def _what(self, key: Key) -> str:
        dc, name = key
        if key == AGENT:
            return f"Consul at {self._settings.address}"
        return f"service {name!r} in {dc}" if name else f"service list in {dc}"

    # ------------------------------------------------------- catalog and health

    async def _watch_catalog(self, dc: str) -> None:
        await self._follow(
            (dc, ""),
            "/v1/catalog/services",
            service_list,
            functools.partial(self._apply_catalog, dc),
        )

    async def _watch_service(self, dc: str, name: str) -> None:
        await self._follow(
            (dc, name),
            f"/v1/health/service/{name}",
            health_entries,
            functools.partial(self._apply_health, dc, name),
        )

    def _wanted(self, name: str, tags: list[str]) -> bool:
        s = self._settings
        if not any(fnmatch.fnmatchcase(name, p) for p in s.services):
            return False
        if any(fnmatch.fnmatchcase(name, p) for p in s.exclude):
            return False
        return all(t in tags for t in s.tags)

    def _apply_catalog(self, dc: str, services: dict[str, list[str]]) -> None:
        wanted = {name for name, tags in services.items() if self._wanted(name, tags)}
        for key in [k for k in self._watches if k[0] == dc and k[1] not in wanted]:
            self._watches.pop(key).cancel()
            self._instances.pop(key, None)
            dcs = self._dcs.get(key[1])
            if dcs is not None:
                dcs.discard(key[0])
                if not dcs:  # a name the catalog dropped everywhere: keep nothing of it
                    del self._dcs[key[1]]
            self._problems.pop(key, None)
            self._troubles.clear(key)  # a service that is gone has no trouble left
            self._rebuild(key[1])
        added = sorted(name for name in wanted if (dc, name) not in self._watches)
        watched = len(self._watches) + len(added)
        if watched > self._settings.max_connections - 8 and not self._warned_limit:
            self._warned_limit = True
            log.warning(
                "registry=%s watches %d services but max_connections is %d; raise it (and "
                "Consul's limits.http_max_conns_per_client, default 200) or filter services",
                self.name,
                watched,
                self._settings.max_connections,
            )
        for name in added:
            self._watches[(dc, name)] = self.spawn(
                f"service {name!r} in {dc}", functools.partial(self._watch_service, dc, name)
            )
        self._listed.add(dc)
        self._publish()

    def _apply_health(self, dc: str, name: str, entries: Sequence[object]) -> None:
        instances, problems = parse_health(name, dc, entries, self._options)
        self._instances[(dc, name)] = instances
        self._dcs.setdefault(name, set()).add(dc)
        self._problems[(dc, name)] = problems
        self._rebuild(name)
        self._publish()

    def _rebuild(self, name: str) -> None:
        """One service's Services again (work for this service only: an update of one of
        10k services must not walk the others)."""
        dcs = sorted(self._dcs.get(name, ()))
        per_dc = {dc: self._instances[(dc, name)] for dc in dcs}
        new = build_services(self._options, name, per_dc) if per_dc else []
        problems = [p for dc in dcs for p in self._problems.get((dc, name), ())]
        # with keep_when_empty, a host whose instances are all unhealthy stays, without
        # endpoints, while a datacenter's catalog still lists the service (deregistered:
        # it is gone)
        listed = {service_host(self._options, name, dc) for dc in per_dc}
        self.table.replace(name, new, problems, listed=listed or False)

    # ------------------------------------------------------------------ status

    def _fail(self, key: Key, err: BaseException) -> None:
        if not isinstance(err, TimeoutError):  # timeouts are counted where they are cut
            self._metrics.registry_errors.labels(self.name, "error").inc()
        if key == AGENT:
            detail = f"cannot reach Consul at {self._settings.address}: {describe(err)}"
        else:
            detail = f"{self._what(key)}: {describe(err)}; {self.keeping()}"
        self._troubles.set(key, detail, "error")

    def _answered(self, key: Key, filtered: bool) -> None:
        if self._troubles.kind(key) == "error" and self.view().synced:
            # Consul answers again after failed calls (unreachable, restoring after a
            # restart): its agents' anti-entropy may not have synced every service back yet
            self.came_back("Consul answers again")
        if not filtered:
            self._troubles.clear(key)
            return
        self._metrics.registry_errors.labels(self.name, "acl-filtered").inc()
        self._troubles.set(
            key,
            f"Consul filtered results by ACL ({FILTERED}) for the {self._what(key)}: the "
            "token cannot read every service or node; what it cannot read looks deleted",
            "acl-filtered",
        )

    # --------------------------------------------------------------- publishing

    def _synced(self) -> bool:
        """Every datacenter listed and every wanted service's health fetched once."""
        return (
            bool(self._datacenters)
            and self._listed >= set(self._datacenters)
            and all(key in self._instances for key in self._watches)
        )

    def _publish(self) -> None:
        """Publish a new view. While the first listing is still arriving (one health answer
        per service), views are coalesced (`flush(batch=True)`)."""
        self.flush(synced=self.view().synced or self._synced(), batch=True)
