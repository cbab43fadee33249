"""Protection against mass removal: istiod never loses a live service because of us.

istiod replaces its whole copy of our resources with every response (absence deletes), so one
bad registry listing would take services out of the mesh within a second: a ZooKeeper session
expiry that drops every provider's ephemeral node at once, a Consul agent that sees every
check fail when its own network does, a static file truncated while being written. Eureka
calls its answer to this "self-preservation". Ours: an update that would remove every served
service of a registry, or more than a set share of its instances at once, is held: nothing of
the last accepted view is withdrawn until the change persists for `hold_for` or an operator
confirms it. Like Eureka's self-preservation, which stops expiring leases but still takes new
registrations, a hold lets additions through: a new service, or an instance that is new to
its service, is served at once beside everything held (`held_view`).

A listing that recovers (the services come back) releases the hold by itself, but only
once nearly all of it is back (`release_share`, 10% missing at most): a registry refilling
after a restart (a Eureka or Nacos server that lost its memory, instances registering again
over their heartbeat interval) would otherwise be released at the first listing past the
entry threshold, and the services not back yet withdrawn from istiod while they are alive.
Eureka's own self-preservation waits for 85% of the expected renewals before it lets go.

The decision is a pure function (`guard`) of the accepted view, the incoming one, the current
hold and the time, so it is tested as a decision table; the pipeline owns the state (accepted
views, holds, confirmations, the timer from `next_deadline`).

What counts as removed is the *net* loss of instances per service (each of a service's
`instances` is one endpoint in istiod): max(0, instances before - instances after), and all of
them for a service that is gone or no longer served. A service whose instances were replaced
by as many new ones in one update (a blue/green switch, a redeploy onto new addresses) loses
nothing live, and holding that update would serve only dead addresses; the failure modes above
remove instances without replacing them, and count in full. New services do not offset
removed ones.

Cheap at 10k services / 100k instances (a few ms): only the keys the registry changed since
the accepted view (`View.changed_since`, from its table's log) are looked at, compared by
instance count, and the total is summed only as far as the share rule needs, unless the
update is held.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Generic, Protocol, Self, TypeVar

from mcpserver.model import Service, is_served


class ViewLike(Protocol):
    """What guard() reads of a registry's View (mcpserver.registry.base.View). Typed
    structurally, so this pure module need not import the registry package, which runs
    asyncio tasks."""

    @property
    def registry(self) -> str: ...
    @property
    def services(self) -> Sequence[Service]: ...
    @property
    def synced(self) -> bool: ...
    def with_services(self, services: tuple[Service, ...]) -> Self:
        """The same view with other services (and no table)."""
        ...

    def candidates(self, key: str) -> tuple[Service, ...]:
        """The view's Services under `key`."""
        ...

    def changed_since(self, earlier: Self | None, *, by_value: bool = True) -> Collection[str]:
        """The keys whose Services may differ from `earlier`'s (`by_value` False: every
        Service that is not the same object)."""
        ...


V = TypeVar("V", bound=ViewLike)


@dataclass(frozen=True, slots=True)
class ProtectionPolicy:
    """When an update counts as a mass removal, and how it is released: built once from
    the settings (`ProtectionSettings.policy()`), where the defaults are."""

    max_removed_share: float
    """Hold an update removing more than this share of instances; 1.0 disables the rule."""
    min_instances: int
    """The share rule applies to registries with at least this many instances."""
    hold_empty: bool
    """Hold an update that removes every served service, whatever the registry's size."""
    hold_for: float | None
    """Seconds a held update must persist before it is applied; None: confirmation only."""
    release_share: float
    """A hold ends by itself once a listing removes at most this share of the instances
    (whatever the registry's size); max_removed_share: no hysteresis."""
    window: float
    """Seconds over which removals add up: an update is judged against what was accepted
    this long ago (memory.py keeps it), not only against the update before; 0: per update."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_removed_share <= 1.0:
            raise ValueError(f"max_removed_share {self.max_removed_share} not in 0..1")
        if not 0.0 <= self.release_share <= self.max_removed_share:
            raise ValueError(
                f"release_share {self.release_share} not in 0..max_removed_share "
                f"({self.max_removed_share})"
            )
        if self.min_instances < 0:
            raise ValueError(f"min_instances {self.min_instances} < 0")
        if self.hold_for is not None and self.hold_for < 0:
            raise ValueError(f"hold_for {self.hold_for} < 0")
        if self.window < 0:
            raise ValueError(f"window {self.window} < 0")


@dataclass(frozen=True, slots=True)
class Hold:
    """A held update: what it would remove, and since when it has been held."""

    since: float
    """Monotonic seconds when the update was first held; kept while it persists."""
    reason: str
    """For people: what the update removes and how it will be applied."""
    removed_services: int
    removed_instances: int
    total_instances: int
    cause: str = "mass removal"
    """What holds it: "mass removal" (the share rule, or everything gone) or "recovery"
    (any removal within the recovery grace after the source came back)."""


@dataclass(frozen=True, slots=True)
class Grace:
    """A registry whose source came back (reconnected, restarted, a new session) holds
    every removal until `until` while its clients register again, whatever the share."""

    since: float
    """Monotonic seconds when the source came back."""
    until: float
    why: str
    """What came back: "reconnected to Nacos (namespace public)"."""


class Release(Enum):
    """How a hold ended: each is said differently to operators (docs/operations.md "Logs")."""

    APPLIED = "applied"
    """The removal persisted for `hold_for`: it is served now."""
    CONFIRMED = "confirmed"
    """An operator confirmed the removal: it is served now."""
    RECOVERED = "recovered"
    """The registry came back (a listing within `release_share` of the accepted view): the
    removal is cancelled, the held services stay served."""
    GRACE_OVER = "grace over"
    """The recovery grace ended and what the listing still lacks is no mass removal: the
    removal is applied, served now."""


@dataclass(frozen=True, slots=True)
class Guarded(Generic[V]):
    """The outcome for one registry: the view to build from, and the hold if any."""

    served: V
    hold: Hold | None
    released: Release | None = field(default=None, compare=False)
    """How the hold passed in ended with this decision (None: it goes on, or there was
    none). An explanation of the decision, not part of it: not compared."""


NOTHING: frozenset[str] = frozenset()


def guard(
    accepted: V | None,
    incoming: V,
    hold: Hold | None,
    now: float,
    policy: ProtectionPolicy,
    confirmed: bool,
    keep_when_empty: bool,
    changed: Collection[str] | None = None,
    *,
    withheld: Collection[str] = NOTHING,
    compared_with: str = "",
    grace: Grace | None = None,
) -> Guarded[V]:
    """Decide what to serve for one registry.

    - no accepted view yet: accept `incoming`;
    - `incoming` is not a complete listing (not synced): keep serving `accepted` if it was
      one, with the current hold unchanged; an unsynced `accepted` is no better than what
      follows it, so `incoming` is accepted then;
    - not a mass removal: accept `incoming`, dropping any hold; while a hold is on, a mass
      removal is anything above `policy.release_share` (hysteresis);
    - a mass removal: accept `incoming` if `confirmed`, or if it has been held for
      `policy.hold_for` (measured from the first hold, however the update changed since);
      otherwise serve `accepted` and return the hold.

    `changed`, if the caller knows them: the keys whose Services differ between `accepted`
    and `incoming` (`incoming.changed_since(accepted)`, which is asked otherwise).

    `released` says how a hold that was on (`hold`) ended: APPLIED, CONFIRMED, or RECOVERED
    when the listing no longer removes too much (or is the accepted view again); a hold the
    recovery grace made ends GRACE_OVER when the grace is over and what is still missing is
    no mass removal (it is applied), RECOVERED when nothing is missing any more.
    `withheld`: the keys (`namespace/name`) of services the last build withheld whole (Istio
    would reject them, or their conversion failed). istiod never had them, so they count
    neither as removed nor as served, in either view: removing them is no removal, and a
    registry left with only such services has none served. While held, an accepted service
    among them that `incoming` lacks is not kept (its problem goes with it), and one that
    `incoming` redefines is taken as `incoming` has it.

    `accepted` need not be the view accepted last: over `policy.window` it is the one
    accepted at the start of the window (memory.py), so removals that arrive in slices add
    up; `compared_with` then says what it is ("what was accepted 12s ago", "what peer X
    accepted"), for the reason.

    `grace`: the registry's source came back and its clients may still be registering
    again; until `grace.until` any removal is held (additions flow), whatever the share,
    applied only by confirmation; then the removal left is judged as any update (by
    `max_removed_share`, not the release share), a hold keeping its start (`hold_for`
    counts from the grace's first hold).

    While held, `served` is `held_view(accepted, incoming)`: the accepted View object itself
    when `incoming` adds nothing to it (its status is then the one from when it was
    accepted), otherwise `incoming` with every accepted service and instance it lacks. The
    registry's live status and detail belong to its own view (shown beside the hold), not to
    the view that is served in its place.
    """
    # Every way out without a hold says how a hold that was on ended.
    came_back = Release.RECOVERED if hold is not None else None
    if accepted is None or incoming is accepted:
        return Guarded(incoming, None, came_back)
    if not incoming.synced:
        if accepted.synced:
            return Guarded(accepted, hold)
        return Guarded(incoming, None, came_back)
    against = f" (compared with {compared_with})" if compared_with else ""
    if grace is not None and now < grace.until and not confirmed:
        found = _mass_removal(
            accepted, incoming, ANY_REMOVAL, keep_when_empty, changed, False, withheld
        )
        if found is None:
            return Guarded(incoming, None, came_back)
        removed_services, removed_instances, total_instances, what = found
        reason = (
            f"update removes {what} of registry {incoming.registry}{against}, which came back "
            f"{duration(round(now - grace.since))} ago ({grace.why}); every removal is held "
            f"for protection.recovery_grace, until {duration(round(grace.until - grace.since))} "
            "after it came back, while its clients register again (additions flow); then "
            "judged as any update, or applied at once when an operator confirms it"
        )
        return Guarded(
            held_view(accepted, incoming, withheld),
            Hold(
                hold.since if hold is not None else now,
                reason,
                removed_services,
                removed_instances,
                total_instances,
                "recovery",
            ),
        )
    # a hold the grace made is judged afresh when the grace is over (the entry share), a
    # mass-removal hold by the release share
    releasing = hold is not None and hold.cause != "recovery"
    found = _mass_removal(accepted, incoming, policy, keep_when_empty, changed, releasing, withheld)
    if found is None:
        if hold is not None and hold.cause == "recovery":
            left = _mass_removal(
                accepted, incoming, ANY_REMOVAL, keep_when_empty, changed, False, withheld
            )
            if left is not None:  # something is still missing, and it is applied now
                return Guarded(
                    incoming, None, Release.CONFIRMED if confirmed else Release.GRACE_OVER
                )
        return Guarded(incoming, None, came_back)
    since = hold.since if hold is not None else now
    if confirmed:
        return Guarded(incoming, None, Release.CONFIRMED if hold is not None else None)
    if policy.hold_for is not None and now - since >= policy.hold_for:
        return Guarded(incoming, None, Release.APPLIED if hold is not None else None)
    removed_services, removed_instances, total_instances, what = found
    if policy.hold_for is None:
        release = "applied only when an operator confirms it"
    else:
        release = (
            f"applied if it persists for {duration(policy.hold_for)}, or when an operator "
            "confirms it"
        )
    reason = (
        f"update removes {what} of registry {incoming.registry}{against}; nothing of the last "
        f"accepted services is withdrawn (additions flow) until at most "
        f"{policy.release_share:.0%} of their instances are missing; {release}"
    )
    return Guarded(
        held_view(accepted, incoming, withheld),
        Hold(since, reason, removed_services, removed_instances, total_instances),
    )


ANY_REMOVAL = ProtectionPolicy(
    max_removed_share=0.0,
    min_instances=0,
    hold_empty=True,
    hold_for=None,
    release_share=0.0,
    window=0.0,
)
"""The share rule a recovery grace applies: any removal at all (only its share rule is read:
how long the hold lasts is the grace's)."""


def held_view(accepted: V, incoming: V, withheld: Collection[str] = NOTHING) -> V:
    """What a held registry serves: everything `accepted` had, and what `incoming` adds.

    - a service only in `incoming` is served (a new registration);
    - a service only in `accepted` is served as accepted (held);
    - a service in both is served as accepted, unless `incoming` has an instance at an
      address the accepted one lacks and the two differ in nothing else than instances:
      then `incoming`'s, with the accepted instances at addresses it lacks appended. (A
      service redefined while held waits for the release: its held instances may not fit
      its new ports.)

    A service of `accepted` that the last build withheld (`withheld`: istiod never had it)
    is not held: `incoming`'s version is served if it has one, else nothing.

    `accepted` itself when `incoming` adds nothing (no new object, so the build has nothing
    to do). O(services), only while a hold is on."""
    mine = {service.key: service for service in accepted.services}
    served: list[Service] = []
    seen: set[str] = set()
    new = False
    for service in incoming.services:
        seen.add(service.key)
        old = mine.get(service.key)
        if old is None:
            served.append(service)
            new = True
            continue
        if old is service:
            served.append(old)
            continue
        if old.key in withheld:
            served.append(service)  # never served: nothing to hold of it
            new = True
            continue
        known = {instance.address for instance in old.instances}
        if all(i.address in known for i in service.instances):
            served.append(old)  # nothing new in it
            continue
        if replace(service, instances=old.instances) != old:
            served.append(old)
            continue
        there = {instance.address for instance in service.instances}
        lacked = tuple(i for i in old.instances if i.address not in there)
        served.append(replace(service, instances=service.instances + lacked))
        new = True
    missing = [service for service in accepted.services if service.key not in seen]
    kept = [service for service in missing if service.key not in withheld]
    if not new and len(kept) == len(missing):
        return accepted
    served.extend(kept)
    return incoming.with_services(tuple(served))


def _mass_removal(
    accepted: V,
    incoming: V,
    policy: ProtectionPolicy,
    keep_when_empty: bool,
    changed: Collection[str] | None,
    held: bool,
    withheld: Collection[str] = NOTHING,
) -> tuple[int, int, int, str] | None:
    """(removed services, removed instances, total instances, description) if the update
    from `accepted` to `incoming` is a mass removal, else None. `held`: a hold is on, and
    only a listing within `policy.release_share` of `accepted` ends it. Services whose key
    is in `withheld` never reached istiod: they count nowhere."""
    if incoming.services is accepted.services:
        return None

    def counts(service: Service) -> bool:
        return is_served(service, keep_when_empty) and service.key not in withheld

    # Only the keys that changed are looked at; a Service equal to the accepted one under
    # its key loses nothing.
    if changed is None:
        changed = incoming.changed_since(accepted, by_value=False)
    removed_services = 0
    removed_instances = 0
    for key in changed:
        before = [s for s in accepted.candidates(key) if counts(s)]
        if not before:
            continue
        after = incoming.candidates(key)
        new = next((s for s in reversed(after) if counts(s)), None)
        for old in before:
            if any(old is s for s in after):  # the same object: nothing lost
                continue
            # (an equal but other object loses nothing either: its instance count is the
            # same, counted below; never compared deeply, see View.changed_since)
            if new is None:
                removed_services += 1
                removed_instances += len(old.instances)
            else:
                removed_instances += max(0, len(old.instances) - len(new.instances))
    if removed_services == 0 and removed_instances == 0:
        return None
    if policy.hold_empty and not any(counts(s) for s in incoming.services):
        lost = [s for s in accepted.services if counts(s)]
        total = sum(len(s.instances) for s in lost)
        what = f"all {len(lost)} served services ({total} instances)"
        return removed_services, removed_instances, total, what
    # Held iff total >= min_instances and removed > share * total; once held, iff removed >
    # release_share * total. Sum the total only until it clears the share: a small removal
    # stops after a few services.
    share = policy.release_share if held else policy.max_removed_share
    total = 0
    served = 0
    for old in accepted.services:
        if counts(old):
            served += 1
            total += len(old.instances)
            if total * share >= removed_instances:
                return None
    if total < policy.min_instances and not held:
        return None
    # The same words whether the hold starts or goes on: the reason says when it ends.
    what = (
        f"{removed_instances} of {total} instances ({removed_instances / total:.0%}; "
        f"{removed_services} of {served} services gone)"
    )
    return removed_services, removed_instances, total, what


def next_deadline(hold: Hold | None, policy: ProtectionPolicy) -> float | None:
    """Monotonic time at which a held update is applied if it persists (for a timer that
    triggers a rebuild), or None if only confirmation applies it."""
    if hold is None or policy.hold_for is None:
        return None
    return hold.since + policy.hold_for


def release_message(
    registry: str, hold: Hold, released: Release, now: float, policy: ProtectionPolicy
) -> str:
    """The log line that ends a hold: one wording per way it ends, so an operator (and a
    log query) can tell a removal that took effect from one the registry took back."""
    held = duration(round(max(0.0, now - hold.since)))
    services = hold.removed_services
    gone = (
        f"{hold.removed_instances} of {hold.total_instances} instances ({services} "
        f"service{'' if services == 1 else 's'} gone) are withdrawn from istiod"
    )
    if released is Release.APPLIED:
        waited = duration(policy.hold_for) if policy.hold_for is not None else held
        return (
            f"held removal applied after {waited} registry={registry}: it persisted for "
            f"protection.hold_for; {gone}"
        )
    if released is Release.CONFIRMED:
        return f"held removal confirmed by an operator registry={registry} after {held}: {gone}"
    if released is Release.GRACE_OVER:
        return (
            f"held removal applied after the recovery grace registry={registry} after {held}: "
            f"what the registry still lacks is no mass removal; {gone}"
        )
    return (
        f"held removal cancelled registry={registry} after {held}: the registry came back (at "
        f"most {policy.release_share:.0%} of the accepted instances missing); the removal is "
        "not applied, the registry is served as it lists itself now"
    )


def duration(seconds: float) -> str:
    """Go-style durations, as people read them in Istio's docs: 3m0s, 45s, 1h0m0s."""
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
