"""What protection remembers of each registry between rebuilds.

`protection.guard` decides one update against one reference view; this module chooses that
reference and keeps what the next decision needs:

- the views accepted over the last `protection.window` (checkpoints, oldest first, the last
  one being the view accepted last). An update is judged against the view accepted at the
  start of the window, so a loss that arrives in slices adds up: Eureka evicts at most 15%
  of its registry per eviction run, ZooKeeper sessions expire one by one, Nacos expels
  connections one by one; each slice alone stays under `max_removed_share`, and without
  the window every one of them would be withdrawn. Once the slices add up to a mass
  removal, the hold serves the view of the window's start again (nothing of it withdrawn,
  the slices that had flowed included), like any other hold;
- the hold, and the reference it was judged against, frozen while it lasts: the window
  moving on must not change what a hold keeps or when it ends;
- the recovery grace: after the registry's source came back (`View.recovered`), every
  removal is held for the kind's `recovery_grace` (a confirmation ends it early).

Checkpoints are thinned to one per quarter window (a view accepted in between replaces the
newest one), so a registry that changes twice a second keeps about ten views, not a
hundred; the view chosen as the window's start is then up to a quarter window older than
exact, which only adds up more. Each checkpoint shares every unchanged Service object with
the views after it: the memory is that of the services that changed in the window, at most
one version of each service per checkpoint.

Everything here runs on the event loop in O(checkpoints) per rebuild, besides guard's own
work; a registry whose view is the one accepted last costs nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from mcpserver.codec import GraceRecord, HeldRecord, Point, Record
from mcpserver.protection import (
    Grace,
    Guarded,
    Hold,
    ProtectionPolicy,
    Release,
    duration,
    guard,
    next_deadline,
)
from mcpserver.registry.view import Status, View

CHECKPOINTS_PER_WINDOW = 4
"""Checkpoints kept per window (at least): the window's start is exact to 1/4 window."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A view accepted at `at` (monotonic seconds); `origin` says where it came from when
    it is not this replica's own decision (a peer, the state directory)."""

    at: float
    view: View
    origin: str = ""


@dataclass(slots=True)
class Kept:
    """What is remembered of one registry."""

    checkpoints: list[Checkpoint] = field(default_factory=list)
    hold: Hold | None = None
    reference: Checkpoint | None = None
    """While held: the checkpoint the hold was judged against, frozen until it ends."""
    served: View | None = None
    """What the last decision served (the held view while held)."""
    grace: Grace | None = None
    """A grace taken from elsewhere (a peer, the state directory); the registry's own comes
    with its view."""
    grace_over: float | None = None
    """The recovery (its `at`) whose grace a confirmation ended."""
    last_grace: Grace | None = None
    """The grace in effect at the last decision (what a peer takes over)."""
    revision: int = 0
    """Counts changes of what `export` writes (the state directory rewrites on a change)."""

    @property
    def accepted(self) -> View | None:
        return self.checkpoints[-1].view if self.checkpoints else None


@dataclass(frozen=True, slots=True)
class Decision:
    """One registry's outcome: what to serve, the hold if any, whether a hold ended, and
    when to decide again if nothing changes (monotonic; a hold's deadline)."""

    served: View
    hold: Hold | None
    ended: bool = False
    deadline: float | None = None
    released: Release | None = None
    """How a hold that was on ended (protection.Release), for the log line that says so."""
    since: View | None = None
    changed: Collection[str] | None = None
    """The keys `served` changed since the view `since` (the one accepted before), when
    the decision asked: the builder, which built `since` last, need not ask again."""


class Memory:
    """Per-registry protection state; the pipeline asks it once per registry and rebuild."""

    def __init__(
        self,
        policy: ProtectionPolicy,
        keep_when_empty: Mapping[str, bool],
        graces: Mapping[str, float] | None = None,
    ) -> None:
        """`graces`: each registry's recovery grace in seconds (none: 0)."""
        self._policy = policy
        self._keep = keep_when_empty
        self._graces = graces or {}
        self._kept: dict[str, Kept] = {}
        self._phrases: dict[str, str] = {}  # origin -> how reasons name it

    # ------------------------------------------------------------------ reading

    def hold(self, registry: str) -> Hold | None:
        kept = self._kept.get(registry)
        return kept.hold if kept is not None else None

    def origin(self, registry: str) -> str:
        """Where a registry's hold came from: "" (this replica's own view), a peer, the
        state directory."""
        kept = self._kept.get(registry)
        if kept is None or kept.reference is None:
            return ""
        return kept.reference.origin

    def holds(self) -> dict[str, Hold]:
        return {name: kept.hold for name, kept in self._kept.items() if kept.hold is not None}

    # ------------------------------------------------- taken over between replicas

    def revisions(self) -> dict[str, int]:
        """Per registry, a number that changes whenever its `export` does (a hold's words
        aside)."""
        return {name: kept.revision for name, kept in self._kept.items()}

    def export(
        self, now: float, wall: float, only: Collection[str] | None = None
    ) -> dict[str, Record]:
        """Everything remembered, per registry (`only` these), in wall-clock time (`now` is
        the monotonic time that `wall` is): what a peer or the next run takes over with
        `adopt`."""

        def clock(at: float) -> float:
            return wall - (now - at)

        def point(checkpoint: Checkpoint) -> Point:
            services = checkpoint.view.services
            return Point(clock(checkpoint.at), services, checkpoint.origin)

        records = {}
        for name, kept in self._kept.items():
            if not kept.checkpoints or (only is not None and name not in only):
                continue
            hold = None
            if kept.hold is not None and kept.reference is not None:
                hold = HeldRecord(
                    clock(kept.hold.since), kept.hold.reason, kept.hold.cause, point(kept.reference)
                )
            grace = kept.last_grace
            records[name] = Record(
                tuple(point(c) for c in kept.checkpoints),
                hold,
                None
                if grace is None or grace.until <= now
                else GraceRecord(clock(grace.since), clock(grace.until), grace.why),
            )
        return records

    def adopt(
        self, registry: str, record: Record, origin: str, phrase: str, now: float, wall: float
    ) -> None:
        """Take another replica's (or the last run's) memory of a registry as this one's,
        before the first decision: its accepted views become the reference (what the own
        listing lacks is held by the same rules), its hold goes on from the same start
        (so both apply it at the same moment), its grace lasts as long. `origin` names
        where it came from on /debug/registries ("peer 10.0.0.5:15052"), `phrase` in a
        hold's reason ("what peer 10.0.0.5:15052 accepted")."""
        self._phrases[origin] = phrase

        def clock(at: float) -> float:
            return now - (wall - at)

        def checkpoint(point: Point) -> Checkpoint:
            view = View(registry, point.services, True, Status.READY)
            return Checkpoint(clock(point.at), view, origin)

        kept = Kept([checkpoint(p) for p in record.checkpoints])
        if record.hold is not None:
            kept.reference = checkpoint(record.hold.reference)
            kept.hold = Hold(
                clock(record.hold.since), record.hold.reason, 0, 0, 0, record.hold.cause
            )
            kept.served = kept.reference.view
        if record.grace is not None:
            grace = record.grace
            kept.grace = Grace(clock(grace.since), clock(grace.until), grace.why)
        kept.revision = 1  # taken over: worth writing down as this replica's own
        self._kept[registry] = kept

    # ----------------------------------------------------------------- deciding

    def decide(
        self,
        view: View,
        now: float,
        confirmed: bool = False,
        withheld: Collection[str] = frozenset(),
    ) -> Decision:
        """What to serve of `view` (this registry's current one) at monotonic `now`."""
        kept = self._kept.setdefault(view.registry, Kept())
        accepted = kept.accepted
        if kept.hold is None and view is accepted:
            return Decision(view, None)
        grace = self._grace(kept, view, now)
        if not view.synced:
            # an incomplete listing: keep serving a complete one (and its hold) if there
            # is one; otherwise the newer partial listing is at least as good
            if accepted is not None and accepted.synced:
                return Decision(
                    kept.served or accepted, kept.hold, deadline=self._due(kept, grace, now)
                )
            return Decision(view, None)
        keep = self._keep.get(view.registry, False)

        asked: list[tuple[View, Collection[str]]] = []

        def judge(reference: Checkpoint, grace: Grace | None) -> Guarded[View]:
            changed = view.changed_since(reference.view, by_value=False)
            asked.append((reference.view, changed))
            return guard(
                reference.view,
                view,
                kept.hold,
                now,
                self._policy,
                confirmed,
                keep,
                changed,
                withheld=withheld,
                compared_with=self._compared_with(reference, kept, now),
                grace=grace,
            )

        reference: Checkpoint | None
        outcome: Guarded[View]
        if kept.hold is not None:
            reference = kept.reference
            assert reference is not None  # a hold always has its reference
            outcome = judge(reference, grace)
        elif not kept.checkpoints:
            reference, outcome = None, Guarded(view, None)
        else:
            # Against the window's start first: a mass removal since then is held whole,
            # the slices that flowed before included. Then against the view accepted last:
            # the window only ever adds holds to what a single update is judged by (the
            # start alone would miss the removal of services added within the window), and
            # a recovery grace holds what the source lost since it was last seen, not what
            # had flowed before the outage.
            start = self._window_start(kept, now)
            last = kept.checkpoints[-1]
            reference, outcome = start, Guarded(view, None)
            if start is not last:
                outcome = judge(start, None)
            if outcome.hold is None:
                reference, outcome = last, judge(last, grace)
        ended = kept.hold is not None and outcome.hold is None
        before = (
            kept.checkpoints[-1] if kept.checkpoints else None,
            kept.reference,
            kept.last_grace,
        )
        started = kept.hold is None and outcome.hold is not None
        if outcome.hold is None:
            if ended or confirmed or not kept.checkpoints:
                # a hold that ends (released, applied, confirmed) starts the window over:
                # what it decided is the new start
                kept.checkpoints = [Checkpoint(now, view)]
            else:
                self._checkpoint(kept, Checkpoint(now, view))
            kept.reference = None
        elif kept.hold is None:
            kept.reference = reference
        if confirmed and grace is not None:
            # a confirmation applies what the grace held, and ends the grace
            kept.grace = None
            kept.grace_over = view.recovered.at if view.recovered is not None else None
            grace = None
        kept.hold = outcome.hold
        kept.served = outcome.served
        kept.last_grace = grace
        after = (kept.checkpoints[-1] if kept.checkpoints else None, kept.reference, grace)
        if started or ended or any(x is not y for x, y in zip(before, after, strict=True)):
            kept.revision += 1
        released = outcome.released if ended else None
        due = self._due(kept, grace, now)
        since, changed = asked[-1] if asked and outcome.served is view else (None, None)
        return Decision(outcome.served, outcome.hold, ended, due, released, since, changed)

    def _grace(self, kept: Kept, view: View, now: float) -> Grace | None:
        """The recovery grace in effect: the registry's own (its last recovery, unless a
        confirmation ended it) or one taken from a peer, whichever lasts longer."""
        found: list[Grace] = []
        recovered = view.recovered
        seconds = self._graces.get(view.registry, 0.0)
        if recovered is not None and seconds > 0 and recovered.at != kept.grace_over:
            found.append(Grace(recovered.at, recovered.at + seconds, recovered.why))
        if kept.grace is not None:
            found.append(kept.grace)
        live = [g for g in found if now < g.until]
        return max(live, key=lambda g: g.until) if live else None

    def _due(self, kept: Kept, grace: Grace | None, now: float) -> float | None:
        """When to decide again with no change: a hold's hold_for, or the end of the
        grace that holds it (a deadline already past is no reason to wake)."""
        if kept.hold is None:
            return None
        due = [d for d in (next_deadline(kept.hold, self._policy),) if d is not None and d > now]
        if grace is not None:
            due.append(grace.until)
        return min(due) if due else None

    def _window_start(self, kept: Kept, now: float) -> Checkpoint:
        """The checkpoint in effect at `now - window` (the oldest kept if none is that old);
        older ones are dropped. There is at least one."""
        points = kept.checkpoints
        cut = now - self._policy.window
        start = 0
        for index, point in enumerate(points):
            if point.at > cut:
                break
            start = index
        if start:
            del points[:start]
        return points[0]

    def _checkpoint(self, kept: Kept, point: Checkpoint) -> None:
        points = kept.checkpoints
        if self._policy.window <= 0:
            points[:] = [point]
            return
        step = self._policy.window / CHECKPOINTS_PER_WINDOW
        if len(points) >= 2 and point.at - points[-2].at < step:
            points[-1] = point
        else:
            points.append(point)

    def _compared_with(self, reference: Checkpoint, kept: Kept, now: float) -> str:
        """For the hold's reason: what the update was judged against, unless it is simply
        the view accepted last by this replica."""
        if reference.origin:
            return self._phrases.get(reference.origin, reference.origin)
        if reference is kept.checkpoints[-1] or reference.view is kept.accepted:
            return ""
        return (
            f"what was accepted {duration(round(now - reference.at))} ago, "
            f"protection.window {duration(self._policy.window)}"
        )
