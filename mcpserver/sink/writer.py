"""The Kubernetes sink's loop: while this replica holds the Lease, bring the apiserver's
ServiceEntries and WorkloadEntries that we own to the served set, writing only what changed.

What it promises, as the MCP path does (docs/deployment.md "Kubernetes sink"):
- nothing before the first complete snapshot (the store is unprimed until then), and only
  the served set, after protection: a held removal is never deleted;
- only objects carrying our owner label are updated or deleted; a served name that another
  object holds is reported and left alone;
- a restart or a new leader writes nothing that did not change: it lists what it owns, and
  an object whose content-version annotation matches is not written;
- writes are rate limited (a token bucket) and bounded in flight; a snapshot that arrives
  during a sync is folded into the next one; throttling and server errors back off;
- one replica writes; the others stand by with the same served set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcpserver.backoff import backoff
from mcpserver.failure import describe
from mcpserver.metrics import Metrics
from mcpserver.sink.client import ApiError, KubeClient
from mcpserver.sink.config import KubernetesSinkSettings
from mcpserver.sink.lease import Lease, LeaseLostError
from mcpserver.sink.objects import (
    FIELD_MANAGER,
    KINDS,
    Key,
    desired,
    desired_among,
    plan,
    read_listed,
    to_object,
)
from mcpserver.xds.resources import PackedResource
from mcpserver.xds.snapshot import Snapshot
from mcpserver.xds.store import SnapshotStore

log = logging.getLogger("mcpserver.sink")


STOP_WAIT = 10.0
"""Seconds stop() waits for the loop to end once cancelled."""


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation of this task that an exception group swallowed: when a child
    of a TaskGroup fails while the parent is being cancelled, Python 3.11's TaskGroup raises
    the group of errors, not CancelledError, and `except*` or `except Exception` around it
    would keep the loop running for good (stop() then waited forever)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Bucket:
    """A token bucket: `rate` per second, up to `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate, self._burst = rate, float(burst)
        self._tokens = float(burst)
        self._at = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
                self._at = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self._rate)


class KubernetesSink:
    def __init__(
        self,
        settings: KubernetesSinkSettings,
        store: SnapshotStore,
        metrics: Metrics,
        identity: str,
        env: Mapping[str, str],
    ) -> None:
        self._settings = settings
        self._store = store
        self._metrics = metrics
        self._owner = settings.owner
        self.client = KubeClient(settings, env)
        self.lease = Lease(
            self.client,
            settings.namespace(),
            settings.lease_name(),
            identity,
            settings.lease_duration,
            settings.renew_deadline,
            settings.retry_period,
        )
        self._bucket = Bucket(settings.writes_per_second, settings.burst)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._ours: dict[Key, str] = {}  # objects we own -> their content version
        self._foreign: set[Key] = set()  # names others hold (what we list, and GETs)
        self._taken: tuple[Key, ...] = ()  # served names others hold, at the last sync
        self._failed: dict[Key, str] = {}  # key -> why its last write failed
        self._said: dict[Key, str] = {}  # what was logged of each key's failure
        self._known = False  # ours and foreign were listed since we lead (then kept up)
        self._listed = False  # ours and foreign are exact (a list just ran, no sync since)
        self._listed_at = 0.0
        self.synced = ""  # the snapshot version the apiserver holds, "" while behind
        self.synced_at = 0.0  # time.time() of the last complete sync
        self.error = ""  # why the last sync did not complete
        self.writes = 0
        self.first_sync_seconds: float | None = None
        # the names each snapshot changed since the one a sync last started from (from
        # Snapshot.changes, followed snapshot by snapshot): while the apiserver holds that
        # one exactly, a sync plans over these alone; None when a step was missed
        self._seen = ""  # the version of the last snapshot the store announced
        self._touched: dict[str, set[str]] | None = None
        self.plans = {"full": 0, "changed": 0}
        self.lists = 0  # full lists of what we own (on leading, after errors, each resync)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        # a snapshot published before we subscribed is where the changes we follow start
        current = self._store.snapshot
        self._seen = current.version if current is not None else ""
        self._unsubscribe = self._store.subscribe(self._published)
        self._task = asyncio.create_task(self._run(), name="kubernetes-sink")
        log.info(
            "kubernetes sink: writing to %s as owner %s once leading (lease %s/%s)",
            self.client.url,
            self._owner,
            self.lease.namespace,
            self.lease.name,
        )

    async def stop(self) -> None:
        """Stop writing, then hand the lease over. Never raises."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._task is not None:
            self._task.cancel()
            # bounded: a stop must end whatever the loop is in the middle of
            done, _ = await asyncio.wait({self._task}, timeout=STOP_WAIT)
            if not done:
                log.warning("kubernetes sink: its loop did not stop in %gs", STOP_WAIT)
            elif not self._task.cancelled() and self._task.exception() is not None:
                log.warning("kubernetes sink: its loop ended with %r", self._task.exception())
        await self.lease.release()
        await self.client.close()
        self._metrics.sink_leader.set(0)

    # ------------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """For /debug/sink and the status page."""
        snapshot = self._store.snapshot
        return {
            "apiserver": self.client.url,
            "owner": self._owner,
            "lease": f"{self.lease.namespace}/{self.lease.name}",
            "identity": self.lease.identity,
            "leading": self.lease.leading,
            "holder": self.lease.holder,
            "lease_error": self.lease.error,
            "owned": len(self._ours),
            "synced": bool(snapshot is not None and self.synced == snapshot.version),
            "synced_version": self.synced,
            "synced_at": self.synced_at,
            "error": self.error,
            "failed": {"/".join(k): why for k, why in sorted(self._failed.items())[:100]},
            "foreign": ["/".join(k) for k in self._taken[:100]],
            "writes": self.writes,
            "plans": dict(self.plans),
            "lists": self.lists,
            "requests": self.client.requests,
        }

    # --------------------------------------------------------------------- loop

    def _published(self) -> None:
        """Each snapshot as the store publishes it: note what it changed, wake the loop."""
        snapshot = self._store.snapshot
        if snapshot is not None:
            if self._touched is not None and snapshot.base and snapshot.base == self._seen:
                for kind, change in snapshot.changes.items():
                    names = self._touched.setdefault(kind, set())
                    names.update(change.added, change.removed, change.changed)
            else:
                self._touched = None
            self._seen = snapshot.version
        self._wake.set()

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                await self.lease.acquire()
                self._metrics.sink_leader.set(1)
                self._known = self._listed = False
                try:
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self.lease.hold())
                        group.create_task(self._lead())
                except* LeaseLostError:
                    pass
                _raise_if_cancelled()
                attempt = 0
            except Exception as err:  # a bug must not end the sink for good: said, retried
                _raise_if_cancelled()
                log.exception("kubernetes sink: failed; retrying")
                self.error = describe(err)
                await asyncio.sleep(backoff(attempt, 1.0, 30.0))
                attempt += 1
            finally:
                self._metrics.sink_leader.set(1 if self.lease.leading else 0)

    async def _lead(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            snapshot = self._store.snapshot
            resync_due = time.monotonic() - self._listed_at >= self._settings.resync
            if snapshot is not None:
                try:
                    if not self._known or resync_due:
                        await self._list()
                    if self.synced != snapshot.version or self._failed:
                        await self._sync(snapshot)
                    failures = 0
                except ApiError as err:
                    failures += 1
                    self.error = str(err)
                    self._known = self._listed = False
                    log.warning("kubernetes sink: sync failed (retrying): %s", err)
            delay = self._settings.resync
            if failures or self._failed:
                delay = backoff(min(failures, 8), 1.0, 60.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _list(self) -> None:
        """What we own (and which served names others hold), listed afresh."""
        ours: dict[Key, str] = {}
        foreign: set[Key] = set()
        for kind in KINDS.values():
            async for item in self.client.list(kind.cluster_path):
                listed = read_listed(kind.kind, item, self._owner)
                if listed.ours:
                    ours[listed.key] = listed.version
                else:
                    foreign.add(listed.key)
        self._ours, self._foreign = ours, foreign
        self._known = self._listed = True
        self._listed_at = time.monotonic()
        self.lists += 1
        self._metrics.sink_objects.set(len(ours))

    async def _sync(self, snapshot: Snapshot) -> None:
        began = time.monotonic()
        # before any await: the names changed since the last sync's snapshot, if known and
        # relative to `snapshot`; from here on they accumulate for the next sync
        following = snapshot.version == self._seen
        touched, self._touched = (self._touched, {}) if following else (None, None)
        asked: list[Key] | None = None
        if touched is not None and self.synced and not self._listed and not self._failed:
            # the apiserver holds the last synced snapshot exactly: only these can differ
            resources, asked = desired_among(snapshot, touched)
            self.plans["changed"] += 1
        else:
            resources = desired(snapshot)
            self.plans["full"] += 1
        try:
            await self._write(snapshot, resources, asked, began)
        except BaseException:
            self._touched = None  # what the apiserver holds is unknown: plan over all
            raise
        if self.synced != snapshot.version:
            self._touched = None

    async def _write(
        self,
        snapshot: Snapshot,
        resources: Mapping[Key, PackedResource],
        asked: list[Key] | None,
        began: float,
    ) -> None:
        """Apply and delete what differs among `asked` (every key when None)."""

        def ours() -> Mapping[Key, str]:
            if asked is None:
                return self._ours
            return {key: self._ours[key] for key in asked if key in self._ours}

        wanted = {key: r.version for key, r in resources.items()}
        todo = plan(wanted, ours(), self._foreign)
        if not self._listed:
            await self._check_new(todo.apply)
            todo = plan(wanted, ours(), self._foreign)
        self._listed = False  # names created by others from now on are found by a GET
        self._failed = {}
        semaphore = asyncio.Semaphore(self._settings.concurrency)

        async def bounded(write: Awaitable[None]) -> None:
            async with semaphore:
                await self._bucket.take()
                await write

        await asyncio.gather(
            *(bounded(self._apply(key, resources[key])) for key in todo.apply),
            *(bounded(self._delete(key)) for key in todo.delete),
        )
        self._taken = todo.foreign
        for key in todo.foreign:
            self._failed[key] = "an object we do not own has this name: left alone"
        self._metrics.sink_objects.set(len(self._ours))
        self._metrics.sink_failed.set(len(self._failed))
        if self._failed:
            self.error = f"{len(self._failed)} objects not written (see /debug/sink)"
            return
        self.error = ""
        self.synced, self.synced_at = snapshot.version, time.time()
        if self.first_sync_seconds is None:
            self.first_sync_seconds = time.monotonic() - began
        if todo:
            log.info(
                "kubernetes sink: synced version=%s applied=%d deleted=%d in %.2fs",
                snapshot.version,
                len(todo.apply),
                len(todo.delete),
                time.monotonic() - began,
            )

    async def _check_new(self, keys: tuple[Key, ...]) -> None:
        """Names we would create: is each free, or held by an object we do not own?"""
        for key in keys:
            if key in self._ours or key in self._foreign:
                continue
            kind, namespace, name = key
            found = await self.client.request(
                "GET", KINDS[kind].path(namespace, name), allow=frozenset({404})
            )
            if found.status == 404:
                continue
            listed = read_listed(kind, found.body, self._owner)
            if listed.ours:
                self._ours[key] = listed.version
            else:
                self._foreign.add(key)

    async def _apply(self, key: Key, resource: PackedResource) -> None:
        kind, namespace, name = key
        try:
            obj = to_object(resource, self._owner)
            await self.client.apply(KINDS[kind].path(namespace, name), obj, FIELD_MANAGER)
        except (ApiError, ValueError) as err:
            self._wrote(kind, "apply", ok=False)
            self._refused(key, "apply", err)
            return
        self._wrote(kind, "apply", ok=True)
        self._ours[key] = resource.version

    async def _delete(self, key: Key) -> None:
        kind, namespace, name = key
        try:
            await self.client.request(
                "DELETE",
                KINDS[kind].path(namespace, name),
                allow=frozenset({404}),
            )
        except ApiError as err:
            self._wrote(kind, "delete", ok=False)
            self._refused(key, "delete", err)
            return
        self._wrote(kind, "delete", ok=True)
        self._ours.pop(key, None)

    def _wrote(self, kind: str, verb: str, *, ok: bool) -> None:
        self.writes += 1
        self._metrics.sink_writes.labels(kind, verb, "ok" if ok else "error").inc()

    def _refused(self, key: Key, verb: str, err: Exception) -> None:
        why = f"{verb} refused: {err}"
        if self._said.get(key) != why:
            self._said[key] = why
            log.warning("kubernetes sink: %s %s", "/".join(key), why)
        self._failed[key] = why
