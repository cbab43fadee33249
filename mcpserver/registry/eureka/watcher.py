"""Keeps a Eureka registry's view current: a full fetch, then a delta every poll_interval,
merged and checked against the server's hash, as Eureka's Java client does.

One supervised task polls. The first round fetches `/apps` whole into the mirror (every
instance, any status); each later round fetches `/apps/delta`, merges it and compares the
mirror's reconcile hash with the server's `apps__hashcode`: equal, only the apps the delta
touched are converted again; different (a delta missed: the poll came later than the
server's ~3 minute delta window, a failover to a peer with another history, a server that
restarted), `/apps` is fetched whole and every app that differs from what we serve is
converted again. A delta the server refuses (403: `disable-delta`) is a full fetch too.
Eureka's hash counts statuses only, so a missed delta that moved an address or changed
metadata without changing a status goes unseen by it: every `resync_interval` the round is
a full fetch whatever the hash says.

Failures keep the last view (DEGRADED, naming each server and what went wrong) and are
retried with jittered backoff; the next round goes on from the mirror we hold, and the hash
says whether that is still right. A server that restarted empty answers an empty registry
until its clients re-register: the first answer after failed rounds is a recovery
(`Registry.came_back`), so protection holds whatever it lacks for `recovery_grace` while
the clients' renewals bring them back (and its mass-removal rule after that). A restart
between two polls that no poll saw fail is not told apart from other changes.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import ssl
from collections.abc import Mapping

from mcpserver.backoff import backoff
from mcpserver.metrics import Metrics
from mcpserver.model import Problem
from mcpserver.registry.base import Registry
from mcpserver.registry.eureka.client import (
    EurekaClient,
    EurekaHTTPError,
    EurekaUnavailableError,
)
from mcpserver.registry.eureka.config import EurekaRegistrySettings
from mcpserver.registry.eureka.parser import (
    DocumentError,
    EurekaInstance,
    EurekaOptions,
    Mirror,
    convert_app,
    merge,
    mirror_of,
    parse_document,
    reconcile_hash,
)
from mcpserver.registry.labels import LabelFilter

log = logging.getLogger("mcpserver.registry.eureka")

ERROR_BACKOFF_CAP = 10.0  # a server that comes back is noticed within ~10 s
ERRORS = (EurekaHTTPError, EurekaUnavailableError, DocumentError)
BAD_RECORDS = "(unreadable records)"  # the table part of records that could not be read
RECOVERY_CHECK = 180.0
"""Seconds after the server came back during which a delta that changed something is
checked by a full fetch in the next round. Eureka answers reads from a response cache that
every write invalidates, but a read racing a write can store an answer computed before it
(the cache keeps a load that an invalidation overtook) until the next write or its expiry,
180 s (`responseCacheAutoExpirationInSeconds`). A delta cached so agrees with its own hash:
the hash check cannot see it. A restarted server is refilled by a burst of registrations,
and when the burst's last one is lost so, a live instance would be missing for minutes and
withdrawn once the recovery grace is over. /apps is another cache entry, read after the
burst: one full fetch brings what the delta lacks, and the deltas after it then disagree
with the hash until the stale one expires (each such round fetches everything)."""


class EurekaRegistry(Registry):
    """A Eureka cluster (one or more peers) and the apps to serve."""

    def __init__(
        self, settings: EurekaRegistrySettings, metrics: Metrics, env: Mapping[str, str]
    ) -> None:
        super().__init__(settings.name, metrics, keep_when_empty=settings.keep_when_empty)
        self._settings = settings
        self._env = env
        self._options = EurekaOptions(
            registry=settings.name,
            namespace=settings.namespace,
            host_template=settings.host_template,
            statuses=frozenset(settings.statuses),
            default_protocol=settings.default_protocol.lower(),
            region=settings.region,
            endpoints_mode=settings.endpoints,
            labels=LabelFilter(settings.name, settings.labels, metrics),
        )
        self._client: EurekaClient | None = None
        self._mirror: Mirror | None = None  # None: the next round fetches everything
        # records that could not be read at all, by subject and message (a delta repeats
        # its records for minutes); replaced by each full fetch
        self._bad: dict[tuple[str, str], Problem] = {}
        # each app's instances as last converted (its Services are in the table)
        self._converted: dict[str, dict[str, EurekaInstance]] = {}
        self._resync_at = 0.0  # loop time of the next full fetch, whatever the hash says
        self._outage = False  # the last round failed: the next answer is a recovery
        self._recovered_at: float | None = None  # loop time the server last came back
        self.full_fetches = 0
        self.delta_fetches = 0
        self.mismatches = 0

    @property
    def client(self) -> EurekaClient | None:
        return self._client

    # ---------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        s = self._settings
        context: ssl.SSLContext | None = None
        if s.tls is not None:
            context = ssl.create_default_context(
                cafile=str(s.tls.ca_file) if s.tls.ca_file else None
            )
            if s.tls.cert_file and s.tls.key_file:
                context.load_cert_chain(str(s.tls.cert_file), str(s.tls.key_file))
        credentials = None
        if s.auth is not None:
            credentials = (s.auth.username, s.auth.password.resolve(self._env))
        self._client = EurekaClient(
            s.servers, credentials=credentials, ssl_context=context, timeout=s.request_timeout
        )
        self.spawn("poll", self._poll)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()

    # ------------------------------------------------------------------ polling

    async def _poll(self) -> None:
        attempt = 0
        while True:
            try:
                await self._round()
            except ERRORS as err:
                self._fail(err)
                self._outage = True
                delay = backoff(attempt, cap=ERROR_BACKOFF_CAP)
                attempt += 1
            else:
                self.recover()
                self._outage = False
                attempt = 0
                delay = self._settings.poll_interval
            await asyncio.sleep(delay)

    async def _round(self) -> None:
        if self._mirror is None or asyncio.get_running_loop().time() >= self._resync_at:
            await self._fetch_all()
            return
        assert self._client is not None
        try:
            body = await self._client.get("/apps/delta")
        except EurekaHTTPError as err:
            if err.code != 403:
                raise
            log.info("delta refused registry=%s (%s); fetching everything", self.name, err)
            await self._fetch_all()
            return
        delta = parse_document(body, self.name)
        self.delta_fetches += 1
        touched = merge(self._mirror, delta)
        self._bad.update(((p.subject, p.message), p) for p in delta.problems)
        ours = reconcile_hash(self._mirror)
        if ours != delta.hashcode:
            self.mismatches += 1
            log.info(
                "eureka hash mismatch registry=%s: ours %r, %s's %r; fetching everything",
                self.name,
                ours,
                self._client.server,
                delta.hashcode,
            )
            self._mirror = None  # if the full fetch fails, the next round starts with one
            await self._fetch_all()
            return
        if self._convert(touched) and self._recovering():
            self._resync_at = 0.0  # check it against /apps in the next round

    def _recovering(self) -> bool:
        """Within RECOVERY_CHECK seconds of the server coming back."""
        since = self._recovered_at
        now = asyncio.get_running_loop().time()
        return since is not None and now - since < RECOVERY_CHECK

    async def _fetch_all(self) -> None:
        assert self._client is not None
        document = parse_document(await self._client.get("/apps"), self.name)
        self.full_fetches += 1
        self._resync_at = asyncio.get_running_loop().time() + self._settings.resync_interval
        self._mirror = mirror_of(document)
        self._bad = {(p.subject, p.message): p for p in document.problems}
        self._convert(set(self._mirror) | set(self._converted))

    # --------------------------------------------------------------- conversion

    def _wanted(self, app: str) -> bool:
        name = app.lower()
        return any(fnmatch.fnmatchcase(name, p.lower()) for p in self._settings.apps)

    def _convert(self, apps: set[str]) -> bool:
        """Convert again each of these apps whose instances differ from what it was last
        converted from; publish if anything changed (or this is the first listing). Returns
        whether any app's instances changed."""
        assert self._mirror is not None
        changed = False
        for app in sorted(apps):
            instances = self._mirror.get(app, {}) if self._wanted(app) else {}
            if self._converted.get(app) == instances and app in self._converted:
                continue
            changed = True
            if not instances:
                self._converted.pop(app, None)
                self.table.drop(app)
                continue
            # while Eureka lists the app (every instance DOWN, STARTING...), keep_when_empty
            # keeps its hosts, without endpoints, until the app itself is gone
            services, problems = convert_app(self._options, app, instances.values())
            self._converted[app] = dict(instances)
            self.table.replace(app, services, problems)
        self._publish()
        return changed

    def _publish(self) -> None:
        view = self.view()
        if self._outage and view.synced:
            # the first answer after an outage: a restarted server lists only the
            # instances that renewed (and registered again) since
            self.came_back("Eureka answers again after an outage")
            self._outage = False
            self._recovered_at = asyncio.get_running_loop().time()
        self.table.replace(BAD_RECORDS, (), self._bad.values())
        self.flush(synced=True)

    # ------------------------------------------------------------------ status

    def _fail(self, err: BaseException) -> None:
        kind = "error"
        if isinstance(err, EurekaHTTPError) and err.code in (401, 403):
            kind = "unauthorized"
        self._metrics.registry_errors.labels(self.name, kind).inc()
        where = ", ".join(self._settings.servers)
        self.degrade(f"Eureka ({where}): {err}; serving the last known view")
