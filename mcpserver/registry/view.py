"""The immutable View a registry publishes, and how two views of one registry differ.

A View is a registry's services at one moment, keyed by service key (`namespace/name`),
with the revision of the registry's service table it was taken at (registry/table.py) and
the keys each revision changed. Whoever keeps an earlier view (the builder, protection)
asks `changed_since(earlier)` once per rebuild: the keys changed in between, from the log
when it reaches back that far (the work is what changed), otherwise by comparing both
views key by key (an unchanged Service is usually the same object, so that costs a
dictionary walk, not a deep comparison per service).

Pure: no event loop, no I/O; the builder reads views from a worker thread.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import Self

from mcpserver.model import Problem, Service


class Status(Enum):
    STARTING = "starting"  # no complete listing yet
    READY = "ready"  # watching, view is current
    DEGRADED = "degraded"  # source unreachable or unreadable; serving the last known view


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
    """For people: "reconnected to Nacos (namespace public)"."""


@dataclass(frozen=True, slots=True)
class Revision:
    """One revision of a service table: the keys it changed, and the revision before it
    (None where the table started a new log). Views share these links; none is changed."""

    number: int
    keys: tuple[str, ...]
    before: Revision | None
    logged: int
    """Keys named from the start of this log up to here (the table bounds it)."""


NO_SERVICES: Mapping[str, Service] = MappingProxyType({})
NO_SHADOWS: Mapping[str, tuple[Service, ...]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class View:
    """A registry's services at one moment, and whether they are a complete listing.

    `services` is every Service the registry shows; `by_key` the same by key. A registry
    can show two Services under one key (two ZooKeeper roots with one interface, two
    Consul services whose names sanitize alike): `by_key` then has one of them (the first
    by hosts, then by value, the merge's order) and `shadowed` the others; the merge
    withholds all but one and says so. A view made from a plain tuple (protection's held
    view, what a peer remembers, tests) has no table (`table` 0) and no log."""

    registry: str
    services: tuple[Service, ...] = ()
    synced: bool = False
    status: Status = Status.STARTING
    detail: str = ""
    problems: tuple[Problem, ...] = ()
    recovered: Recovery | None = None
    """The source's last recovery, if any (kept in every later view)."""
    table: int = field(default=0, compare=False)
    """Which service table this view was taken from (0: none); revisions count per table."""
    revision: int = field(default=0, compare=False)
    log: Revision | None = field(default=None, repr=False, compare=False)
    """The revisions that led here, newest first (their keys), as far as the table keeps."""
    by_key: Mapping[str, Service] = field(
        default_factory=lambda: NO_SERVICES, repr=False, compare=False
    )
    shadowed: Mapping[str, tuple[Service, ...]] = field(
        default_factory=lambda: NO_SHADOWS, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not self.table:  # a view without a table indexes its own services
            keyed, shadowed = index(self.services)
            object.__setattr__(self, "by_key", keyed)
            object.__setattr__(self, "shadowed", shadowed)

    def with_services(self, services: tuple[Service, ...]) -> Self:
        """The same view with other services and no table (protection's held view)."""
        return replace(self, services=services, table=0, revision=0, log=None)

    def candidates(self, key: str) -> tuple[Service, ...]:
        """Every Service this view shows under `key` (nearly always one, or none)."""
        found = self.by_key.get(key)
        if found is None:
            return ()
        more = self.shadowed.get(key)
        return (found, *more) if more else (found,)

    def changed_since(self, earlier: View | None, *, by_value: bool = True) -> Collection[str]:
        """The keys whose Services may differ between `earlier` and this view (every key of
        either when `earlier` is None): from the log when both views come from one table
        and the log reaches back to `earlier`, else by comparing the two key by key.

        `by_value` False: a Service that is not the same object counts as changed without
        comparing it further (a superset, for protection, which only counts instances). A
        registry's table keeps the old object for an equal Service, so within one table the
        answer is the same; against a view a minute old under churn (protection's window
        checkpoint) nearly every Service differs, and comparing 10k of them deeply per
        rebuild cost the event loop tenths of a second."""
        if earlier is None:
            return self.by_key.keys()
        logged = self._logged_since(earlier)
        if logged is not None:
            return logged
        mine, theirs = self.by_key, earlier.by_key
        if mine is theirs:
            return ()
        if by_value:
            changed = {k for k, s in mine.items() if (o := theirs.get(k)) is not s and o != s}
        else:
            changed = {k for k, s in mine.items() if theirs.get(k) is not s}
        changed.update(theirs.keys() - mine.keys())
        for key in self.shadowed.keys() | earlier.shadowed.keys():
            if self.candidates(key) != earlier.candidates(key):
                changed.add(key)
        return changed

    def _logged_since(self, earlier: View) -> Collection[str] | None:
        if not self.table or earlier.table != self.table or earlier.revision > self.revision:
            return None
        if earlier.revision == self.revision:
            return ()
        keys: set[str] = set()
        link = self.log
        while link is not None and link.number > earlier.revision:
            keys.update(link.keys)
            if link.number == earlier.revision + 1:
                return keys
            link = link.before
        return None


def same_revision(one: View, other: View) -> bool:
    """Whether two views show one revision of one table (views without a table never do)."""
    return bool(one.table) and one.table == other.table and one.revision == other.revision


def index(
    services: tuple[Service, ...],
) -> tuple[Mapping[str, Service], Mapping[str, tuple[Service, ...]]]:
    """`services` by key, and the Services shadowed under a key another one has (see View)."""
    keyed = {s.key: s for s in services}
    if len(keyed) == len(services):
        return MappingProxyType(keyed), NO_SHADOWS
    groups: dict[str, list[Service]] = {}
    for service in services:
        groups.setdefault(service.key, []).append(service)
    shadowed: dict[str, tuple[Service, ...]] = {}
    for key, group in groups.items():
        if len(group) > 1:
            first, *rest = sorted(group, key=precedence)
            keyed[key] = first
            shadowed[key] = tuple(rest)
    return MappingProxyType(keyed), MappingProxyType(shadowed)


def precedence(service: Service) -> tuple[tuple[str, ...], str]:
    """Which of the Services under one key a view shows first: by hosts, then by value (the
    merge's order, convert/merge.py `_in_order`), so every replica picks the same."""
    return service.hosts, repr(service)
