"""What every registry kind shares: its service table, the View it publishes from it, its
status, problems logged once, and a supervisor that keeps its watcher tasks alive.

A registry watches its source and keeps its services in a ServiceTable (table.py), part by
part; `flush()` turns what changed into a new View (view.py). Its change callback carries no
data: it only tells the debouncer "something changed"; the pipeline then reads every
registry's View. A View is replaced whole, never mutated, so the pipeline can read it from
any task.

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
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import replace

from mcpserver.backoff import backoff
from mcpserver.failure import describe
from mcpserver.metrics import Metrics
from mcpserver.model import Problem, Service
from mcpserver.registry.table import ServiceTable
from mcpserver.registry.view import Recovery, Status, View

log = logging.getLogger("mcpserver.registry")

RECOVERY_REPEAT = 1.0
"""Seconds within which a second recovery of the same kind is the same one (every watch
loop of a registry comes back at once)."""

LISTING_BATCH = 0.1
"""Seconds between views while a first listing arrives (`flush(batch=True)`)."""

OnChange = Callable[[], None]
WHOLE = "(whole)"
"""The part `publish()` replaces: a registry that lists everything at once."""


RESTART_RESET = 60.0
"""A task that ran this long before failing starts its backoff over."""


class Registry(abc.ABC):
    """One configured registry. Kinds implement `open()` (and `close()` if they hold
    connections) and report through `table` and `flush()` (or `publish()` of everything),
    `set_status()` and `degrade()`."""

    def __init__(self, name: str, metrics: Metrics, *, keep_when_empty: bool = False) -> None:
        self.name = name
        self._metrics = metrics
        self.table = ServiceTable(keep_when_empty)
        """The registry's services by part and key: kinds `replace()` parts, then `flush()`."""
        self._view = View(name, detail="starting")
        self._batch: asyncio.TimerHandle | None = None
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
        if self._batch is not None:
            self._batch.cancel()
            self._batch = None
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
    ) -> None:
        """Replace everything the registry shows (one part, `WHOLE`), then `flush()`: for a
        registry that lists everything at once (a file). Unchanged Services cost a
        comparison each, and rebuilds then cost what changed."""
        self.table.replace(WHOLE, services, problems, listed=False)
        self.flush(synced)

    def flush(self, synced: bool | None = None, *, batch: bool = False) -> None:
        """Publish what the table changed as a new view (none if nothing changed and
        `synced` is unchanged), keeping the current status; problems are logged and counted
        once, when first seen. `synced` None keeps it. `batch`: while the first listing
        arrives (neither the view nor `synced` is), at most one view per LISTING_BATCH
        seconds, so a listing of N parts costs O(N) view builds N/batch times at most."""
        old = self._view
        if batch and not (old.synced or synced):
            if self._batch is None:
                self._batch = asyncio.get_running_loop().call_later(LISTING_BATCH, self._flushed)
            return
        if self._batch is not None:
            self._batch.cancel()
            self._batch = None
        now_synced = old.synced if synced is None else synced
        if not self.table.pending() and now_synced == old.synced and old.table:
            return
        shown = self.table.commit()
        status = old.status
        if status is Status.STARTING and now_synced:
            status = Status.READY
        if shown.problems is not old.problems:
            self._report(shown.problems)
        detail = "" if status is Status.READY and old.status is Status.STARTING else old.detail
        self._set_view(
            replace(
                shown,
                registry=self.name,
                synced=now_synced,
                status=status,
                detail=detail,
                recovered=old.recovered,
            )
        )

    def _flushed(self) -> None:
        self._batch = None
        self.flush()

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
