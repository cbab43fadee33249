"""Registry views -> protection -> build (builder.py) -> store, one rebuild at a time.

The async half of a rebuild: the gate before the first snapshot, protection's state
(memory.py) and its timers, the build in a worker thread, retries with backoff, metrics and
the log lines that say what happened. The build itself is pure and costs what changed
(builder.py).

What istiod holds is protected at every step (docs/operations.md "What mcpserver does when
things go wrong"): the first snapshot waits for every registry (answering istiod from a
half-filled store would delete what it holds: pkg/adsc/adsc.go handleMCP replaces the whole
set); a registry update that removes everything, or most instances at once, is held
(protection.py); a service whose conversion fails is withheld alone, never the whole
rebuild; and a rebuild that fails anyway keeps the last snapshot, says so on /readyz and
gRPC health, and is retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from mcpserver.backoff import backoff
from mcpserver.builder import Builder, BuildInputs, BuildResult, Known
from mcpserver.codec import Record
from mcpserver.failure import describe
from mcpserver.memory import Memory
from mcpserver.metrics import Metrics
from mcpserver.model import Problem
from mcpserver.protection import Hold, ProtectionPolicy, release_message
from mcpserver.registry.base import Registry
from mcpserver.registry.view import Status, View
from mcpserver.xds.shards import shard_label
from mcpserver.xds.store import SnapshotStore

log = logging.getLogger("mcpserver.pipeline")

WAITING_LOG_EVERY = 30.0
"""Seconds between warnings while the first snapshot waits for a registry."""


@dataclass(frozen=True, slots=True)
class PipelineOptions:
    """Settings the pipeline needs, as plain values: built once from the settings
    (`app.pipeline_options`), which hold every default."""

    keep_when_empty: Mapping[str, bool]
    vip_cidr: str
    merge_policy: str
    protection: ProtectionPolicy
    serve_partial_after: float | None  # None: the first snapshot waits for every registry
    layouts: tuple[int, ...]  # shard layouts N > 1 to serve (xds/shards.py)
    recovery_grace: Mapping[str, float]
    """Seconds each registry (by name) holds removals after its source came back."""


@dataclass(frozen=True, slots=True)
class RegistryState:
    """What /debug/registries shows: the registry's own view and any held removal, and
    what the snapshot serves of it: (services, instances)."""

    view: View
    hold: Hold | None
    served: tuple[int, int] = (0, 0)
    origin: str = ""
    """Where a hold's reference came from: "" this replica's own view, else a peer or the
    state directory."""


class Pipeline:
    """Owns the conversion cache and the protection state; one rebuild at a time (the
    debouncer guarantees it)."""

    def __init__(
        self,
        registries: Sequence[Registry],
        store: SnapshotStore,
        metrics: Metrics,
        options: PipelineOptions,
        trigger: Callable[[], None] = lambda: None,
        on_serving: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self._registries = registries
        self._store = store
        self._metrics = metrics
        self._options = options
        self._trigger = trigger
        self._on_serving = on_serving
        self._started = time.monotonic()
        self._builder: Builder | None = None
        self._reported: set[Problem] = set()
        self._memory = Memory(options.protection, options.keep_when_empty, options.recovery_grace)
        self._confirmed: set[str] = set()
        self._withheld: frozenset[str] = frozenset()  # the last build's (BuildResult.withheld)
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._failures = 0
        self._failure_logged = ""
        self._retry: asyncio.TimerHandle | None = None
        self._pool_warned = False
        self._waiting_logged = self._started  # when the first snapshot's wait was last said
        self.failure = ""  # the last rebuild's error while rebuilds fail
        self.serving = False
        self.problems: tuple[Problem, ...] = ()
        self.served: Mapping[str, tuple[int, int]] = {}  # registry -> (services, instances)
        for registry in registries:
            self._count_status(registry.view())
            metrics.registry_services.labels(registry.name).set(0)  # nothing served yet
        self.taking_over = False
        """The first snapshot waits: what peers (or the state directory) remember is
        still being read (bounded by the app: peers.wait)."""
        self.on_decided: Callable[[], None] | None = None
        """Called after each rebuild's protection decisions (the state directory's
        writer looks at `revisions` then)."""

    # ------------------------------------------------------------------ reading

    def views(self) -> list[View]:
        return [r.view() for r in self._registries]

    def registry_states(self) -> list[RegistryState]:
        memory = self._memory
        return [
            RegistryState(
                v,
                memory.hold(v.registry),
                self.served.get(v.registry, (0, 0)),
                memory.origin(v.registry),
            )
            for v in self.views()
        ]

    def waiting_for(self) -> list[str]:
        """Registries the first snapshot still waits for (none once it is published), and
        "peers" while what they remember is being read."""
        if self._store.snapshot is not None:
            return []
        waiting = [v.registry for v in self.views() if not v.synced]
        return [*waiting, "peers"] if self.taking_over else waiting

    def remembered(self, only: Collection[str] | None = None) -> dict[str, Record]:
        """What protection remembers of each registry (`only` these), in wall-clock time
        (for peers and the state directory)."""
        return self._memory.export(time.monotonic(), time.time(), only)

    def revisions(self) -> dict[str, int]:
        """Per registry, a number that changes when what `remembered` gives does."""
        return self._memory.revisions()

    def take_over(self, records: Mapping[str, tuple[str, str, Record]]) -> None:
        """Before the first snapshot: take what another replica (or the last run)
        remembers of each registry as this one's own. `records`: registry -> (origin, the
        phrase reasons use for it, record); registries not configured here are ignored.
        Then the first snapshot may be built."""
        names = {r.name for r in self._registries}
        now, wall = time.monotonic(), time.time()
        for name, (origin, phrase, record) in records.items():
            if name in names and self._store.snapshot is None:
                self._memory.adopt(name, record, origin, phrase, now, wall)
        self.taking_over = False
        self._trigger()

    def partial_remaining(self) -> float | None:
        """Seconds until the first snapshot may be served without late registries."""
        after = self._options.serve_partial_after
        if after is None:
            return None
        return max(0.0, self._started + after - time.monotonic())

    def note_waiting(self) -> None:
        """Say who the first snapshot waits for: at most once per WAITING_LOG_EVERY seconds
        however often it is called, and not once startup.serve_partial_after has passed
        (the rebuild then says it serves without them)."""
        waiting = self.waiting_for()
        remaining = self.partial_remaining()
        now = time.monotonic()
        if not waiting or remaining == 0.0 or now - self._waiting_logged < WAITING_LOG_EVERY:
            return
        self._waiting_logged = now
        then = (
            "istiod gets nothing until they list (set startup.serve_partial_after to serve "
            "without them)"
            if remaining is None
            else f"serving without them in {remaining:.0f}s (startup.serve_partial_after)"
        )
        log.warning(
            "first snapshot waits for registries=%s (%s); %s",
            ",".join(waiting),
            "; ".join(
                f"{v.registry}: {v.status.value} {v.detail}".strip()
                for v in self.views()
                if v.registry in waiting
            ),
            then,
        )

    # ------------------------------------------------------------- operator acts

    def confirm(self, registry: str) -> bool:
        """An operator confirms a held removal: applied at the next rebuild (now), or at the
        first complete listing after it; the hold's end is logged when it is applied."""
        if self._memory.hold(registry) is None:
            return False
        log.info("held removal confirmation received registry=%s; applying it", registry)
        self._confirmed.add(registry)
        self._trigger()
        return True

    def count_status(self, registry: str) -> None:
        """Set `mcpserver_registry_status` of one registry: the status it reports, except
        degraded while a removal of it is held (what /debug/registries and the status page
        say). The pipeline is its only writer: the registry on each change (through the
        app), and each rebuild as holds start and end."""
        view = next((r.view() for r in self._registries if r.name == registry), None)
        if view is not None:
            self._count_status(view)

    def _count_status(self, view: View) -> None:
        name = view.registry
        status = Status.DEGRADED if self._memory.hold(name) is not None else view.status
        for each in Status:
            self._metrics.registry_up.labels(name, each.value).set(each is status)

    # ------------------------------------------------------------------ rebuild

    async def rebuild(self) -> None:
        """One rebuild; never raises (a failure keeps the last snapshot and retries)."""
        try:
            await self._rebuild()
        except Exception as err:
            self._failed(err)
            return
        if self.failure:
            log.info("rebuild recovered after %d failures", self._failures)
        self.failure, self._failures, self._failure_logged = "", 0, ""
        await self._set_serving(self._store.snapshot is not None)

    def _failed(self, err: Exception) -> None:
        self._failures += 1
        self.failure = f"rebuild failed: {describe(err)}"
        self._metrics.build_failures.inc()
        if self.failure != self._failure_logged:  # once per distinct error
            self._failure_logged = self.failure
            log.error("rebuild failed; keeping the previous snapshot", exc_info=True)
        delay = backoff(self._failures - 1, first=0.5, cap=30.0)
        if self._retry is not None:
            self._retry.cancel()
        self._retry = asyncio.get_running_loop().call_later(delay, self._trigger)
        asyncio.get_running_loop().create_task(self._set_serving(False))

    async def _set_serving(self, serving: bool) -> None:
        if serving != self.serving:
            self.serving = serving
            if self._on_serving is not None:
                await self._on_serving(serving)

    async def _rebuild(self) -> None:
        views = self.views()
        if self._store.snapshot is None and self.taking_over:
            log.debug("holding first snapshot; reading what peers remember")
            return
        if self._store.snapshot is None:
            waiting = [v.registry for v in views if not v.synced]
            remaining = self.partial_remaining()
            if waiting and (remaining is None or remaining > 0):
                log.debug("holding first snapshot; waiting for registries=%s", ",".join(waiting))
                return
            if waiting:
                log.warning(
                    "startup.serve_partial_after passed: serving without registries=%s; istiod "
                    "gets none of their services and deletes any it held from an earlier run",
                    ",".join(waiting),
                )
        known: dict[str, Known] = {}
        served_views = [self._protect(view, known) for view in views]
        if self.on_decided is not None:
            self.on_decided()
        started = time.perf_counter()
        inputs = BuildInputs(
            self._options.keep_when_empty,
            self._options.vip_cidr,
            self._options.merge_policy,
            self._options.layouts,
        )
        builder = self._builder or Builder(inputs)
        self._builder = None  # a build that raises leaves it half-updated: never reused
        result = await asyncio.to_thread(builder.build, served_views, known)
        self._builder = builder
        self._withheld = result.withheld
        self._report(result.problems + self._hold_problems())
        self._report_vips(result)
        self._metrics.build_seconds.observe(time.perf_counter() - started)
        self._metrics.encoded.inc(result.encoded)
        self.served = result.served
        for registry in self._registries:
            services, _ = self.served.get(registry.name, (0, 0))
            self._metrics.registry_services.labels(registry.name).set(services)
        for kind, type_set in result.snapshot.sets.items():
            self._metrics.resources.labels(kind).set(len(type_set.resources))
        for n, parts in result.snapshot.layouts.items():
            for k, part in enumerate(parts):
                for kind, type_set in part.sets.items():
                    self._metrics.shard_resources.labels(shard_label(n, k), kind).set(
                        len(type_set.resources)
                    )
        current = self._store.snapshot
        if current is not None and current.version == result.snapshot.version:
            return
        self._metrics.builds.inc()
        self._store.publish(result.snapshot)
        log.debug(  # the INFO line saying what changed comes from mcpserver.snapshot
            "snapshot published version=%s %s encoded=%d",
            result.snapshot.version,
            " ".join(f"{k}={len(s.resources)}" for k, s in result.snapshot.sets.items()),
            result.encoded,
        )

    def _protect(self, view: View, known: dict[str, Known]) -> View:
        """The view to serve for one registry: its own, or the last accepted one while a
        mass removal is held (memory.py keeps what protection remembers). Notes in `known`
        the keys changed that protection asked for, so the build need not ask again."""
        name = view.registry
        now = time.monotonic()
        held = self._memory.hold(name)
        outcome = self._memory.decide(view, now, name in self._confirmed, self._withheld)
        if outcome.since is not None and outcome.changed is not None:
            known[name] = (outcome.since, outcome.changed)
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        if outcome.hold is None:
            # a confirmation lasts until the hold ends (not past an incomplete listing)
            self._confirmed.discard(name)
            if held is not None and outcome.released is not None:
                policy = self._options.protection
                log.warning(release_message(name, held, outcome.released, now, policy))
        elif held is None:
            log.warning("removal held registry=%s: %s", name, outcome.hold.reason)
        if outcome.deadline is not None:
            self._timers[name] = asyncio.get_running_loop().call_later(
                max(0.0, outcome.deadline - now) + 0.01, self._trigger
            )
        self._metrics.removal_held.labels(name).set(1 if outcome.hold else 0)
        self._count_status(view)
        return outcome.served

    def _hold_problems(self) -> tuple[Problem, ...]:
        return tuple(
            Problem(name, "removal held", hold.reason, "held")
            for name, hold in sorted(self._memory.holds().items())
        )

    def _report_vips(self, result: BuildResult) -> None:
        used = result.vips
        self._metrics.vips.set(used)
        if result.vip_capacity and used > result.vip_capacity / 2:
            if not self._pool_warned:
                self._pool_warned = True
                log.warning(
                    "vip.cidr %s is more than half used (%d of %d): collisions grow; use a "
                    "larger block",
                    self._options.vip_cidr,
                    used,
                    result.vip_capacity,
                )
        else:
            self._pool_warned = False

    def _report(self, problems: tuple[Problem, ...]) -> None:
        """Log each withheld resource once, when first seen; count them per registry."""
        now = set(problems)
        for problem in sorted(now - self._reported, key=lambda p: (p.registry, p.subject)):
            if problem.reason in ("malformed", "held"):
                continue  # the registry (or protection) logged it already
            log.warning(
                "withheld registry=%s subject=%s: %s",
                problem.registry,
                problem.subject,
                problem.message,
            )
            self._metrics.rejected.labels(problem.registry).inc()
        self._reported = now
        self.problems = tuple(sorted(now, key=lambda p: (p.registry, p.subject, p.message)))
        per_registry: dict[str, int] = {r.name: 0 for r in self._registries}
        for problem in now:
            if problem.reason not in ("malformed", "held"):
                per_registry[problem.registry] = per_registry.get(problem.registry, 0) + 1
        for registry, count in per_registry.items():
            self._metrics.invalid.labels(registry).set(count)
