"""What every registry kind shares: the immutable View it publishes, its status, problems
logged once, and a supervisor that keeps its watcher tasks alive.

A registry watches its source and keeps a current View. Its change callback carries no data:
it only tells the debouncer "something changed"; the pipeline then reads every registry's
View. A View is replaced whole, never mutated, so the pipeline can read it from any task.

No registry may die silently: every watcher task runs under `spawn()`, which logs an
unexpected exception with its traceback, turns the registry DEGRADED with the error as its
detail (so /debug/registries and mcpserver_registry_status show it), keeps the last good view
served, and restarts the task with jittered exponential backoff. `stop()` never raises.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Generic, Self, TypeVar

from mcpserver.config import RegistrySettings
from mcpserver.failure import describe
from mcpserver.metrics import Metrics
from mcpserver.model import Problem, Service, identity_changes

# re-exported (explicitly, for mypy): every kind publishes a Change from here
from mcpserver.registry.ledger import Change as Change  # noqa: PLC0414

log = logging.getLogger("mcpserver.registry")


class Status(Enum):
    STARTING = "starting"  # no complete listing yet
    READY = "ready"  # watching, view is current
    DEGRADED = "degraded"  # source unreachable or unreadable; serving the last known view


Ids = Mapping[int, Service]
"""Services by id(): identity sets that keep their members alive (so ids stay unique)."""

DELTA_LIMIT = 4096
"""Changes a delta's log may hold before the next view starts a new base."""
DELTA_MIN = 64
"""Changes a delta's log may always hold, however few services its view has."""


@dataclass(frozen=True, slots=True)
class Delta:
    """How a view's services came from an earlier services tuple `base` of the same
    registry: the first `length` entries of `log`, each (added, service) with added False
    for a removal. Registries that know what they changed say so (`publish(...,
    change=...)`); successive views share one append-only log (nothing is copied per
    publish) until it holds more entries than the view has services (at least DELTA_MIN, at
    most DELTA_LIMIT), then start again from the current tuple. The pipeline, which may skip
    views, then finds what changed since the view it built by replaying the entries in
    between (`View.changes_since`). The log keeps every service it names alive, so their
    ids stay unique while anyone holds it."""

    base: tuple[Service, ...]
    log: list[tuple[bool, Service]]
    length: int


@dataclass(frozen=True, slots=True)
class Recovery:
    """The registry's source came back: reconnected after an outage, a server restarted, a
    session re-established (each kind says which of its events mean this). Its clients may
    not all have registered again yet (a restarted Nacos or Eureka lost its ephemeral
    registrations; providers re-create ZooKeeper nodes their expired sessions took), so
    protection holds removals for the kind's `recovery_grace` from `at`."""

    at: float
    """time.monotonic() when it came back."""
    why: str
    """For people: "reconnected to Nacos (a new gRPC connection)"."""


RECOVERY_REPEAT = 1.0
"""Seconds within which a second recovery of the same kind is the same one (every watch
loop of a registry comes back at once)."""


@dataclass(frozen=True, slots=True)
class View:
    """A registry's services at one moment, and whether they are a complete listing."""

    registry: str
    services: tuple[Service, ...] = ()
    synced: bool = False
    status: Status = Status.STARTING
    detail: str = ""
    problems: tuple[Problem, ...] = ()
    delta: Delta | None = field(default=None, repr=False, compare=False)
    recovered: Recovery | None = None
    """The source's last recovery, if any (kept in every later view)."""

    def with_services(self, services: tuple[Service, ...]) -> Self:
        """The same view with other services and no delta log (protection's held view)."""
        return replace(self, services=services, delta=None)

    def changes_since(self, earlier: View) -> tuple[Ids, Ids]:
        """(removed, added): the services of `earlier` not in this view and those of this
        view not in `earlier`, by identity. From the delta log when `earlier` is on it (the
        work is what changed); otherwise by comparing ids of everything, in C."""
        if self.services is earlier.services:
            return {}, {}
        mine, theirs = self.delta, earlier.delta
        if mine is not None:
            start: int | None = None
            if mine.base is earlier.services:
                start = 0
            elif theirs is not None and theirs.log is mine.log and theirs.length <= mine.length:
                start = theirs.length
            if start is not None:
                removed: dict[int, Service] = {}
                added: dict[int, Service] = {}
                for came, service in mine.log[start : mine.length]:
                    key = id(service)
                    if came:
                        if removed.pop(key, None) is None:
                            added[key] = service
                    elif added.pop(key, None) is None:
                        removed[key] = service
                return removed, added
        return identity_changes(earlier.services, self.services)


OnChange = Callable[[], None]


@dataclass(frozen=True, slots=True)
class RegistryContext:
    """What every registry is built with besides its own settings."""

    metrics: Metrics
    env: Mapping[str, str]


def backoff(attempt: int, first: float = 0.5, cap: float = 30.0) -> float:
    """Jittered exponential backoff: `first` doubling up to `cap`, +-25 %."""
    # jitter spreads retries out; nothing secret depends on it
    return float(min(cap, first * 2.0**attempt) * random.uniform(0.75, 1.25))  # noqa: S311


RESTART_RESET = 60.0
"""A task that ran this long before failing starts its backoff over."""


class Registry(abc.ABC):
    """One configured registry. Kinds implement `open()` (and `close()` if they hold
    connections) and report through `publish()`, `set_status()` and `degrade()`."""

    def __init__(self, name: str, metrics: Metrics) -> None:
        self.name = name
        self._metrics = metrics
        self._view = View(name, detail="starting")
        self._on_change: OnChange = lambda: None
        self._tasks: list[asyncio.Task[None]] = []
        self._reported: set[tuple[str, str]] = set()
        self._stopping = False
        self.restarts = 0

    # ---------------------------------------------------------------- lifecycle

    def view(self) -> View:
        """The current immutable view."""
        return self._view

    async def start(self, on_change: OnChange) -> None:
        """Begin watching; on_change is called (on the event loop) whenever view() changes."""
        self._on_change = on_change
        await self.open()

    @abc.abstractmethod
    async def open(self) -> None:
        """Begin watching: read what is cheap, `spawn()` the long-running watchers."""

    async def close(self) -> None:  # noqa: B027  # an optional hook, empty by design
        """Release connections; called by stop() after every watcher task has ended."""

    async def stop(self) -> None:
        """Stop watching and release connections. Never raises: a registry that fails to
        stop must not keep the server (or the other registries) from stopping."""
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await task
                except Exception:
                    log.exception("registry task failed while stopping registry=%s", self.name)
        try:
            await self.close()
        except Exception:
            log.exception("registry failed to close registry=%s", self.name)

    # -------------------------------------------------------------- supervision

    def spawn(self, what: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `run()` as a supervised task: restarted with backoff if it raises."""
        self._tasks = [t for t in self._tasks if not t.done()]
        task = asyncio.create_task(self._supervise(what, run), name=f"{self.name}:{what}")
        self._tasks.append(task)
        return task

    async def _supervise(self, what: str, run: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while not self._stopping:
            began = loop.time()
            try:
                await run()
                return
            except Exception as err:
                if self._stopping:
                    return
                if loop.time() - began > RESTART_RESET:
                    attempt = 0
                delay = backoff(attempt)
                attempt += 1
                self.restarts += 1
                log.error(
                    "registry task crashed registry=%s task=%s; restarting in %.1fs",
                    self.name,
                    what,
                    delay,
                    exc_info=True,
                )
                self._metrics.registry_errors.labels(self.name, "crash").inc()
                self.degrade(f"{what} failed: {describe(err)}; restarting; {self.keeping()}")
                await asyncio.sleep(delay)

    # ----------------------------------------------------------------- reporting

    def publish(
        self,
        services: Iterable[Service],
        problems: Iterable[Problem] = (),
        *,
        synced: bool | None = None,
        change: Change | None = None,
    ) -> None:
        """Replace the view's services (and problems, which are logged and counted once
        when first seen), keeping the current status. `change`, when the registry knows it,
        says which services it removed and added: rebuilds then cost what changed."""
        old = self._view
        now_synced = old.synced if synced is None else synced
        status = old.status
        if status is Status.STARTING and now_synced:
            status = Status.READY
        problems = tuple(problems)
        self._report(problems)
        services = tuple(services)
        self._set_view(
            View(
                registry=self.name,
                services=services,
                synced=now_synced,
                status=status,
                detail=""
                if status is Status.READY and old.status is Status.STARTING
                else old.detail,
                problems=problems,
                delta=_compose(old, services, change),
                recovered=old.recovered,
            )
        )

    def set_status(self, status: Status, detail: str = "") -> None:
        """Change status and detail; a registry that has not listed everything yet stays
        STARTING rather than READY."""
        old = self._view
        if status is Status.READY and not old.synced:
            status, detail = Status.STARTING, detail or "listing"
        if (status, detail) == (old.status, old.detail):
            return
        if status is Status.DEGRADED and old.status is not Status.DEGRADED:
            log.warning("registry degraded registry=%s: %s", self.name, detail)
        elif status is Status.DEGRADED:
            # still degraded for another reason (a broken file now empty, an unreachable
            # agent now refusing the token): said once, as the reason shown changes
            log.warning(
                "registry still degraded, reason changed registry=%s: %s", self.name, detail
            )
        elif old.status is Status.DEGRADED:
            log.info("registry recovered registry=%s", self.name)
        self._set_view(replace(old, status=status, detail=detail))

    def keeping(self) -> str:
        """What istiod keeps while this registry fails, for a degraded detail: its last
        view, or nothing when it never listed (there is no view to keep)."""
        if self._view.synced:
            return "serving the last known view"
        return "nothing served from it yet"

    def degrade(self, detail: str) -> None:
        """Source unreachable or unreadable: keep serving the last view, say why."""
        self.set_status(Status.DEGRADED, detail)

    def recover(self) -> None:
        """The source answers again."""
        if self._view.status is Status.DEGRADED:
            self.set_status(Status.READY)

    def came_back(self, why: str) -> None:
        """The source came back after an outage (`Recovery`): call it before publishing
        the first listing that follows, so that listing is judged with the grace. A repeat
        within RECOVERY_REPEAT seconds is the same recovery."""
        old = self._view
        now = time.monotonic()
        last = old.recovered
        if last is not None and last.why == why and now - last.at < RECOVERY_REPEAT:
            return
        log.info("registry source came back registry=%s: %s", self.name, why)
        self._set_view(replace(old, recovered=Recovery(now, why)))

    def _set_view(self, view: View) -> None:
        # mcpserver_registry_status and _services are the pipeline's to set: it alone knows
        # whether a removal is held and what is served (Pipeline.count_status)
        self._view = view
        self._on_change()

    def _report(self, problems: tuple[Problem, ...]) -> None:
        """Log and count each skipped record once, when first seen (again only if it went
        away and came back)."""
        now = {(p.subject, p.message) for p in problems}
        for problem in problems:
            if (problem.subject, problem.message) not in self._reported:
                log.warning(
                    "skipped record registry=%s subject=%s: %s",
                    self.name,
                    problem.subject,
                    problem.message,
                )
                self._metrics.skipped_records.labels(self.name, problem.reason or "malformed").inc()
        self._reported = now


class Troubles:
    """The parts of one registry that are failing (a watch loop, a namespace, a listing),
    newest last. While any is left the registry is DEGRADED, showing the newest; when the
    last clears it recovers (which also clears a degradation the supervisor set after a
    crash). A repeat of the same trouble (the same `kind`; by default, the same detail)
    changes nothing, so a retry loop does not rebuild the pipeline on every failed call."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._scopes: dict[Hashable, tuple[str, str]] = {}  # scope -> (kind, detail)

    def set(self, scope: Hashable, detail: str, kind: str | None = None) -> None:
        same = detail if kind is None else kind
        old = self._scopes.get(scope)
        if old is not None and old[0] == same:
            return
        self._scopes.pop(scope, None)
        self._scopes[scope] = (same, detail)
        self._registry.degrade(detail)

    def kind(self, scope: Hashable) -> str | None:
        """The kind of `scope`'s trouble (its detail when set without a kind), or None."""
        found = self._scopes.get(scope)
        return found[0] if found is not None else None

    def clear(self, scope: Hashable) -> None:
        """`scope` is fine again: recover when no trouble is left, else show the newest."""
        if self._scopes.pop(scope, None) is None and self._scopes:
            return
        if self._scopes:
            self._registry.degrade(next(reversed(self._scopes.values()))[1])
        else:
            self._registry.recover()


def _compose(old: View, services: tuple[Service, ...], change: Change | None) -> Delta:
    """The new view's delta: `change` appended to the old view's log (its base kept), or a
    new base (this tuple) when the change is unknown, not relative to what the old view
    shows, or the log is full."""
    if services is old.services and old.delta is not None:
        return old.delta
    if change is None or change.since is not old.services:
        return Delta(services, [], 0)
    delta = old.delta if old.delta is not None else Delta(old.services, [], 0)
    log = delta.log
    # The log keeps every Service it names alive, removed ones too, so it is bounded by the
    # view's size as well: replaying more entries than the view has services costs more
    # than comparing the views' ids (one pass in C), and under the soak's churn two logs of
    # ~4k entries kept ~3.7k dead copies of ~25 services (~6 MiB of Python objects, RSS
    # growing for the 20 minutes they took to fill).
    if delta.length != len(log) or len(log) > min(DELTA_LIMIT, max(DELTA_MIN, len(services))):
        return Delta(services, [], 0)
    log.extend((False, s) for s in change.removed)
    log.extend((True, s) for s in change.added)
    return Delta(delta.base, log, len(log))


@dataclass(frozen=True, slots=True)
class OfflineView:
    """What `check-config` can learn about a registry without its live source: a view to
    convert and validate exactly as `serve` would, where each service came from (for
    messages), and problems that make the whole source unusable."""

    view: View | None = None
    locations: Mapping[str, str] | None = None  # service key -> where it is defined
    origin: str = ""  # where the registry's records come from (a file), for other problems
    errors: tuple[str, ...] = ()


S = TypeVar("S", bound=RegistrySettings)


@dataclass(frozen=True, slots=True)
class Kind(Generic[S]):
    """One registry kind, as registered in the kind table (registry/kinds.py): its settings
    model (whose `kind` literal names it), how to build a running registry from them, and
    optionally what check-config can learn about it without a live source."""

    name: str
    settings: type[S]
    build: Callable[[S, RegistryContext], Registry]
    offline: Callable[[S, RegistryContext], OfflineView] | None = None
    recovery_grace: float = 0.0
    """Seconds protection holds removals after the source came back (`Recovery`) by
    default: how long this kind's clients take to register again (docs/operations.md "What mcpserver
    does when things go wrong" says why each kind's is what it is)."""
