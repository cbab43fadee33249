"""The ZooKeeper registry: one ZooKeeper client (connection.py), its connection state, and
the loop side of keeping the view current.

Three parts, split where the threads are:
- the mirror (mirror.py): pipelined asynchronous reads with one-shot watches; their
  callbacks, on the client's thread, copy the raw tree under one lock and wake the loop with
  `call_soon_threadsafe`;
- the assembly (assembly.py): pure; on the loop, turns the raw records of what changed into
  Services and Problems, reusing everything else;
- this module: the client's lifecycle, the connection state, and one supervised task (base
  `spawn()`) that connects, starts the first walk, then takes changes from the mirror,
  assembles them and publishes, re-reads the tree after a reconnect, and retries unreadable
  paths with backoff. Any unexpected exception in it is the supervisor's: logged, DEGRADED,
  restarted. During the first walk it assembles what the walk has read so far in a worker
  thread (the mirror's `take(ahead=True)`), so parsing 100k providers overlaps the walk;
  nothing of it is published before the take that ends the walk, which publishes it all.

Failure policy (docs/configuration.md "ZooKeeper registry"): a suspended connection or lost
session keeps the last view (DEGRADED); after the reconnect (same session or a new one) the
mirror re-reads every node (the client drops all watches with the connection), which
reconciles what changed meanwhile, so a session expiry removes only what is really gone. The
reconnect is a recovery (`Registry.came_back`): for `protection.recovery_grace` what the
re-read lacks is held, while providers whose sessions expired with ours create their nodes
again.

A node we may not read (its ACL, our credentials) is DEGRADED with the path in the detail,
counted in `mcpserver_registry_errors_total{kind="noauth"}` and retried with backoff until
it reads; what was read before stays served.

Credentials the servers refuse (SASL, a server that requires it) are not knocked with again
at once: the client waits until a credential or TLS file changes, or `auth_retry`
(AUTH_FAILED: DEGRADED, `mcpserver_registry_errors_total{kind="auth-failed"}`). A read-only
server (its ensemble lost its quorum) lists a registry that has no view yet, so a replica
started during the outage serves what the ensemble held; a registry that has a view keeps
it and reads nothing from a read-only server (its data may be older than ours, and nothing
changes there), until the client finds a read-write server again and the tree is re-read
(a recovery, as any reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping

from mcpserver.backoff import backoff
from mcpserver.config import format_duration
from mcpserver.metrics import Metrics
from mcpserver.registry.base import Registry
from mcpserver.registry.dubbo.mapping import DubboOptions
from mcpserver.registry.labels import LabelFilter
from mcpserver.registry.view import Status
from mcpserver.registry.zookeeper.assembly import EMPTY, Assembly, Part, PartContents, assemble
from mcpserver.registry.zookeeper.config import ZooKeeperRegistrySettings
from mcpserver.registry.zookeeper.credentials import SettingsCredentials
from mcpserver.registry.zookeeper.interface import (
    AUTH_FAILED,
    CLIENT_ERRORS,
    CONNECTED,
    LOST,
    READ_ONLY,
    SUSPENDED,
    is_auth_failed,
    new_client,
)
from mcpserver.registry.zookeeper.mirror import Mirror, ReadFailure

log = logging.getLogger("mcpserver.registry.zookeeper")

ERROR_KINDS = {
    SUSPENDED: "suspended",
    LOST: "lost",
    AUTH_FAILED: "auth-failed",
    READ_ONLY: "read-only",
}
"""Connection states counted in mcpserver_registry_errors_total{kind}."""
CONNECT_RETRY_CAP = 10.0  # seconds between attempts to reach an unreachable ensemble, at most
READ_RETRY_CAP = 30.0  # ... and between attempts to read a node we may not read
SHOWN_PATHS = 3  # unreadable paths named in the detail; the rest are counted
PACE = 4.0  # behind a stream of changes, rest this many times as long as a refresh took...
MAX_REST = 0.1  # ... but never longer than this (seconds)
INLINE_KEYS = 8  # changed keys assembled on the loop (about 0.2 ms each); more go to a thread


class ZooKeeperRegistry(Registry):
    """One ZooKeeper ensemble, any number of Dubbo and Curator roots."""

    def __init__(
        self, settings: ZooKeeperRegistrySettings, metrics: Metrics, env: Mapping[str, str]
    ) -> None:
        super().__init__(settings.name, metrics)
        self._settings = settings
        self._options = DubboOptions(
            registry=settings.name,
            namespace=settings.namespace,
            host_template=settings.host_template,
            application_host_template=settings.application_host_template,
            label_params=tuple(settings.label_params),
            endpoints_mode=settings.endpoints,
            default_protocol=settings.default_protocol,
            keep_when_empty=settings.keep_when_empty,
            labels=LabelFilter(settings.name, settings.labels, metrics),
        )
        self._walk_options = dataclasses.replace(self._options, keep_when_empty=False)
        self._client = new_client(
            settings.hosts,
            settings.session_timeout,
            SettingsCredentials(settings, env),
            settings.auth_retry,
        )
        self._mirror = Mirror(
            self._client,
            settings.roots,
            settings.services_roots,
            mapping=settings.mapping,
            wake=self._wake_from_thread,
        )
        # Set once in open(), before the client starts its thread, and never again: that
        # thread reads it without a lock.
        self._loop: asyncio.AbstractEventLoop | None = None
        # loop-side state: touched only on the event loop
        self._wakeup = asyncio.Event()  # the mirror has changes, or a retry is due now
        self._states: asyncio.Queue[str] = asyncio.Queue()  # from the client's thread
        self._assembly: Assembly = EMPTY
        # the first walk's parts assembled ahead, published with the take that ends it
        self._ahead: dict[Part, PartContents] | None = {}
        self._relisting = True  # the next full listing replaces every part of the table
        self._synced = False
        self._connection_problem = ""  # from the client's state
        self._start_problem = ""  # the first connection has not come yet
        self._unreadable: tuple[ReadFailure, ...] = ()
        self._lost = False  # reads cut off by a lost connection wait for a re-read
        self._retry_now = False
        self._disconnected = False  # SUSPENDED or LOST since the last CONNECTED
        self._session_lost = False  # LOST since the last CONNECTED
        self._relist_now = False  # reconnected: read the whole tree again
        self._crashed = False  # the watch task failed and waits for its restart
        self._hold_reads = False  # on a read-only server with a view to keep: read nothing

    # ----------------------------------------------------------------- lifecycle

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client.add_listener(self._on_state)
        self.set_status(Status.STARTING, "connecting")
        self.spawn("connection", self._follow_connection)
        self.spawn("watch", self._watch)

    def server(self) -> str:
        """host:port of the ZooKeeper server the client is connected to ("" when none)."""
        return self._client.server

    async def close(self) -> None:
        self._mirror.close()
        await asyncio.to_thread(self._close_client)

    def _close_client(self) -> None:
        with contextlib.suppress(*CLIENT_ERRORS):
            self._client.stop()
            self._client.close()

    # ------------------------------------------------------ the client's thread

    def _on_state(self, state: str) -> None:
        """The client's thread: must not block; hand the state to the loop."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: shutting down
                loop.call_soon_threadsafe(self._states.put_nowait, state)

    def _wake_from_thread(self) -> None:
        """The mirror has changes (called on the client's thread, or a worker thread)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: shutting down
                loop.call_soon_threadsafe(self._wakeup.set)

    # ---------------------------------------------------------------- the loop

    async def _follow_connection(self) -> None:
        """SUSPENDED, LOST and AUTH_FAILED degrade (and count); CONNECTED recovers, and
        after a loss re-reads the whole tree and retries what could not be read, at once.
        READ_ONLY degrades, and reads only for a registry that has no view yet."""
        while True:
            state = await self._states.get()
            if state in ERROR_KINDS:
                self._metrics.registry_errors.labels(self.name, ERROR_KINDS[state]).inc()
            connected = state == CONNECTED or (state == READ_ONLY and not self._synced)
            self._hold_reads = state == READ_ONLY and not connected
            if state in (SUSPENDED, LOST, AUTH_FAILED) or self._hold_reads:
                self._connection_problem = self._describe_state(state)
                self._disconnected = True
                self._session_lost = self._session_lost or state == LOST
            elif connected:
                self._connection_problem = self._describe_state(state) if state == READ_ONLY else ""
                if self._disconnected and state == CONNECTED:
                    # before the re-read publishes: providers whose sessions expired with
                    # ours (a partition) re-create their nodes only once they reconnect
                    self.came_back(
                        "a new ZooKeeper session after the last one expired"
                        if self._session_lost
                        else "reconnected to ZooKeeper"
                    )
                self._relist_now = self._relist_now or self._disconnected
                self._disconnected = False
                self._session_lost = False
                self._retry_now = True
                self._wakeup.set()
            self._update_status()

    def _describe_state(self, state: str) -> str:
        client = self._client
        why = client.last_error
        if state == SUSPENDED:
            return f"connection suspended ({why or 'lost'}); {self.keeping()}"
        if state == LOST:
            return "session lost; serving the last known view until re-listed"
        if state == AUTH_FAILED:
            retry = format_duration(self._settings.auth_retry)
            return (
                f"authentication refused: {why}; tried again when a credential or TLS file "
                f"changes, or in {retry}; {self.keeping()}"
            )
        # READ_ONLY
        server = client.server or "a server"
        if self._hold_reads:
            what = "serving the last known view (reading nothing from it)"
        else:
            what = "listing what it holds"
        return (
            f"connected to a read-only ZooKeeper server {server} (its ensemble has lost its "
            f"quorum): {what}; looking for a read-write server"
        )

    async def _watch(self) -> None:
        try:
            await self._follow_tree()
        except Exception:
            # the supervisor logs it and shows it (DEGRADED); keep that shown until the
            # task restarts
            self._crashed = True
            raise

    async def _follow_tree(self) -> None:
        """Connect, start the first walk, then follow the mirror's changes, re-read the
        tree after a reconnect and retry what could not be read. Runs until stopped.
        Starting it over is harmless: the client stays connected, roots already read are
        not read twice, and the assembly starts from the whole tree (the changes a
        crashed run had taken are lost)."""
        self._crashed = False
        await self._connect()
        self._assembly = EMPTY
        self._ahead = {}
        self._relisting = True
        await asyncio.to_thread(self._mirror.redo)
        # only queues the roots' reads (the client sends them); the mirror wakes us when the
        # walk has read everything, and take() hands over nothing before that
        await asyncio.to_thread(self._mirror.watch_roots)
        loop = asyncio.get_running_loop()
        attempt = 0
        retry_at: float | None = None
        rest_until = 0.0
        while True:
            if (rest := rest_until - loop.time()) > 0:
                await asyncio.sleep(rest)
            self._wakeup.clear()
            if self._relist_now and not self._hold_reads:
                self._relist_now = False
                await asyncio.to_thread(self._mirror.relist)
            began = loop.time()
            if await self._refresh() > 1:
                # Behind a stream of changes (more than one key was waiting): rest before
                # the next refresh, so changes arrive in batches. Refreshing as fast as
                # changes came kept the loop busy with per-refresh costs and starved
                # the ZooKeeper client's thread (which feeds us) of the GIL: at 10k interfaces and
                # 1,000 changes/s the lag grew without bound. A single change is answered
                # at once: no rest after a refresh of one key.
                rest_until = loop.time() + min(PACE * (loop.time() - began), MAX_REST)
            if not self._unreadable and not self._lost:
                attempt, retry_at = 0, None
            elif retry_at is None:
                retry_at = loop.time() + backoff(attempt, cap=READ_RETRY_CAP)
            timeout = None if retry_at is None else max(0.0, retry_at - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            due = retry_at is not None and (self._retry_now or loop.time() >= retry_at)
            if due and not self._hold_reads:
                # a reconnect is a good moment: ZooKeeper answers again, start over
                attempt = 0 if self._retry_now else attempt + 1
                retry_at = None
                await asyncio.to_thread(self._mirror.retry)
            self._retry_now = False

    async def _connect(self) -> None:
        """Start the client, retrying with backoff for as long as it takes."""
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(self._client.start, self._settings.connect_timeout)
                break
            except CLIENT_ERRORS as err:
                # a refusal is shown as the client's AUTH_FAILED state says (the client
                # waits for new credentials by itself); anything else is said here
                if not is_auth_failed(err):
                    self._start_problem = f"cannot connect to {self._settings.hosts}: {err}"
                    self._update_status()
                await asyncio.sleep(backoff(attempt, cap=CONNECT_RETRY_CAP))
                attempt += 1
        self._start_problem = ""
        self._update_status()

    async def _refresh(self) -> int:
        """Take what changed from the mirror, assemble it, publish. Returns how many keys
        changed. A batch of more than INLINE_KEYS is assembled in a worker thread: under
        churn a thousand changed interfaces are a tenth of a second of work, which would
        stall every stream on the loop."""
        taken = self._mirror.take(ahead=self._ahead is not None)
        for failure in taken.failures:
            kind = "noauth" if failure.no_auth else "error"
            self._metrics.registry_errors.labels(self.name, kind).inc()
        # one line when a path becomes unreadable and one when it reads again (a path may
        # have two failed watches: its data and its children)
        before = {f.path for f in self._unreadable}
        now = {f.path: f for f in reversed(taken.unreadable)}
        for path in sorted(now.keys() - before):
            log.warning(
                "cannot read registry=%s path=%s error=%s; retrying with backoff",
                self.name,
                path,
                now[path].error,
            )
        for path in sorted(before - now.keys()):
            log.info("readable again registry=%s path=%s", self.name, path)
        self._unreadable = taken.unreadable
        self._lost = taken.lost
        newly_synced = taken.listed and not self._synced
        self._synced = self._synced or taken.listed
        # handed over: only the latest assembly is kept, so it is updated, not copied
        previous = self._assembly
        changes = taken.changes
        keys = len(changes.interfaces) + len(changes.apps) + len(changes.mappings)
        ahead = self._ahead
        # Until the walk's end is published nothing was: no service was ever shown, so none
        # is kept empty (an interface assembled ahead whose providers then left is absent,
        # as if the walk had been assembled at once).
        options = self._options if ahead is None else self._walk_options
        if ahead is None and keys <= INLINE_KEYS:
            # a few keys (the usual single change): the thread hop would cost more latency
            # than the work itself takes on the loop
            assembly = assemble(options, changes, previous, True)
        elif keys:
            assembly = await asyncio.to_thread(assemble, options, changes, previous, True)
        else:
            assembly = previous
        self._assembly = assembly
        if taken.walking:
            # part of the first walk, assembled while the rest is read: held, not published
            assert ahead is not None
            if assembly is not previous:
                ahead.update(assembly.parts)
            self._update_status()
            return 0
        fresh = assembly is not previous
        parts = assembly.parts if fresh else {}
        if ahead is not None:
            self._ahead = None
            if ahead:  # the walk's end: what was assembled ahead is published with it
                fresh, parts = True, {**ahead, **parts}
        changed = fresh or newly_synced
        if self._relisting and (fresh or taken.listed):
            # a restart of this task assembled from an empty assembly: what the table held
            # of parts not listed again is gone
            self._relisting = False
            self.table.retain(parts)
        if fresh:
            # keep_when_empty is the assembly's (a kept application feeds its mappings)
            for part, (services, problems) in parts.items():
                self.table.replace(part, services, problems, listed=False)
        # status first: a registry that lists for the first time while a path is
        # unreadable goes straight to DEGRADED, never READY in between
        self._update_status()
        if changed:
            self.flush(synced=self._synced)
        return keys

    def _update_status(self) -> None:
        if self._crashed:
            return  # the supervisor's detail stands until the restart
        problem = self._connection_problem or self._start_problem or self._unreadable_detail()
        if problem:
            self.degrade(problem)
        else:
            self.recover()
            if self.view().status is Status.STARTING:
                self.set_status(Status.STARTING, "listing")

    def _unreadable_detail(self) -> str:
        failures = sorted({(f.path, f.error, f.no_auth) for f in self._unreadable})
        if not failures:
            return ""
        parts = [
            f"no permission to read {path} ({error})"
            if no_auth
            else f"cannot read {path} ({error})"
            for path, error, no_auth in failures[:SHOWN_PATHS]
        ]
        if len(failures) > SHOWN_PATHS:
            parts.append(f"and {len(failures) - SHOWN_PATHS} more")
        return "; ".join(parts) + "; retrying; serving the last known view"
