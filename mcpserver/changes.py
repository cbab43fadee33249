"""What each published snapshot changed, said once per publish, and the clocks around it.

Why: "what did we just send istiod?" is the first question when something goes wrong. Each
publish logs one INFO line naming what changed, by registry (`registry zk removed 3 (...)`),
with the names as structured fields for JSON logs; the status page shows the last one.
Only the app sees both ends of a change, so the `ChangeTracker` it owns also keeps when each
registry last reported a change (the status page's "last change") and when the registry
change a snapshot carries was reported, the start of the push latency histogram.

The descriptions are pure (`describe_change`); the tracker runs on the event loop.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Final

from mcpserver.metrics import Metrics
from mcpserver.registry.view import View
from mcpserver.xds.resources import PackedResource
from mcpserver.xds.snapshot import SetChange, Snapshot, TypeSet
from mcpserver.xds.store import SnapshotStore
from mcpserver.xds.typeurls import SERVICE_ENTRY

changes_log = logging.getLogger("mcpserver.snapshot")

_NAME = attrgetter("name")

NAMES_SHOWN: Final = 3
"""Names a change line lists per registry and kind before `and N more`."""
NAMES_IN_FIELDS: Final = 100
"""Names the structured (JSON) fields of a change carry per list: a first snapshot of 50k
services must not become a megabyte log line; the counts are always whole."""
ORIGINS_KEPT: Final = 16
"""Snapshots (per shard layout) whose change origin is remembered for the latency clock."""

_VERBS: Final = ("added", "removed", "changed")


def _names(change: SetChange) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    return change.added, change.removed, change.changed


def listed(names: Sequence[str], limit: int = NAMES_SHOWN) -> str:
    """`a, b, c` or `a, b, c and 117 more`."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def said(change: SetChange, limit: int = NAMES_SHOWN) -> str:
    """`added 1 (shop/new), changed 2 (shop/a, shop/b)`."""
    return ", ".join(
        f"{verb} {len(names)} ({listed(names, limit)})"
        for verb, names in zip(_VERBS, _names(change), strict=True)
        if names
    )


@dataclass(frozen=True, slots=True)
class SnapshotChange:
    """What one publish changed: ServiceEntries by registry, other kinds in total."""

    version: str
    first: bool
    counts: Mapping[str, int]
    services: Mapping[str, SetChange]  # registry -> ServiceEntry changes
    others: Mapping[str, SetChange]  # kind -> changes, for kinds other than ServiceEntry

    def summary(self, limit: int = NAMES_SHOWN) -> str:
        """One line for the log and the status page."""
        counts = " ".join(f"{kind}={count}" for kind, count in self.counts.items())
        head = "first snapshot" if self.first else "snapshot"
        parts = [
            f"registry {registry or '?'} {said(change, limit)}"
            for registry, change in self.services.items()
        ]
        parts += [f"{kind} {said(change, limit)}" for kind, change in self.others.items()]
        what = "; ".join(parts) if parts else "no resource changed"
        return f"{head} {self.version} published: {what} (now {counts})"

    def fields(self) -> dict[str, object]:
        """The same, as structured fields for JSON logs: per registry the names added,
        removed and changed (up to NAMES_IN_FIELDS each) and how many there were."""
        services: dict[str, object] = {}
        for registry, change in self.services.items():
            entry: dict[str, object] = {}
            for what, names in zip(_VERBS, _names(change), strict=True):
                entry[what] = list(names[:NAMES_IN_FIELDS])
                entry[f"{what}_count"] = len(names)
            services[registry or "?"] = entry
        return {
            "snapshot_version": self.version,
            "first": self.first,
            "counts": dict(self.counts),
            "services": services,
            "others": {
                kind: {
                    "added": len(change.added),
                    "removed": len(change.removed),
                    "changed": len(change.changed),
                }
                for kind, change in self.others.items()
            },
        }


def diff_sets(
    old: TypeSet | None, new: TypeSet
) -> tuple[list[PackedResource], list[PackedResource], list[PackedResource]]:
    """Added, removed (from `old`) and changed resources of one kind, in name order."""
    if old is None:
        return list(new.resources), [], []
    if old is new or old.version == new.version:
        return [], [], []
    before = {r.name: r for r in old.resources}
    after = {r.name: r for r in new.resources}
    added = [r for r in new.resources if r.name not in before]
    removed = [r for r in old.resources if r.name not in after]
    changed = [r for r in new.resources if r.name in before and before[r.name].version != r.version]
    return added, removed, changed


def _find(type_set: TypeSet | None, name: str) -> PackedResource | None:
    """The resource called `name` in a set (sorted by name), if any."""
    if type_set is None:
        return None
    resources = type_set.resources
    at = bisect.bisect_left(resources, name, key=_NAME)
    return resources[at] if at < len(resources) and resources[at].name == name else None


def describe_change(
    old: Snapshot | None, new: Snapshot, owner: Callable[[PackedResource], str]
) -> SnapshotChange:
    """Compare two snapshots; `owner` names the registry a ServiceEntry came from."""
    services: dict[str, dict[str, list[str]]] = {}
    others: dict[str, SetChange] = {}
    for kind, type_set in new.sets.items():
        if old is not None and new.base == old.version:
            # the pipeline says what changed: no need to compare the sets
            found = new.changes.get(kind, SetChange())
        else:
            before = old.sets.get(kind) if old is not None else None
            if old is not None and before is None:
                before = TypeSet.of(kind, ())
            added, removed, changed = diff_sets(before, type_set)
            found = SetChange(
                tuple(r.name for r in added),
                tuple(r.name for r in removed),
                tuple(r.name for r in changed),
            )
        if kind != SERVICE_ENTRY:
            if found:
                others[kind] = found
            continue
        for what, names in zip(_VERBS, _names(found), strict=True):
            if not names:
                continue
            # This runs on the loop between a publish and the streams' writes: a set where
            # every service changed (10k names) is grouped in C when one registry owns all.
            registries = list(map(new.owners.get, names))
            first = registries[0]
            if first is not None and registries.count(first) == len(registries):
                services.setdefault(first, {})[what] = list(names)
                continue
            for name, known in zip(names, registries, strict=True):
                registry = known
                if registry is None:
                    resource = _find(type_set, name) or (
                        _find(old.sets.get(kind), name) if old is not None else None
                    )
                    registry = owner(resource) if resource is not None else ""
                entry = services.setdefault(registry, {})
                entry.setdefault(what, []).append(name)
    return SnapshotChange(
        version=new.version,
        first=old is None,
        counts={kind: len(s.resources) for kind, s in new.sets.items()},
        services={
            registry: SetChange(*(tuple(found.get(what, ())) for what in _VERBS))
            for registry, found in sorted(services.items())
        },
        others=others,
    )


@dataclass
class Activity:
    """What the status page shows that no other part keeps: when each registry last reported
    a change, and when the snapshot last changed and how."""

    started_at: float = field(default_factory=time.time)
    registry_changed: dict[str, float] = field(default_factory=dict)  # name -> Unix time
    published_at: float | None = None
    last_change: SnapshotChange | None = None


class ChangeTracker:
    """Follows registry changes and published snapshots for the log, the status page and
    the push latency histogram.

    A registry change (its on_change call) starts a clock unless one runs; the rebuild that
    the debouncer starts next takes it, and the snapshot that rebuild publishes carries it:
    streams then measure from it to the response they write. A rebuild that fails hands its
    clock back to the next one.
    """

    def __init__(
        self, store: SnapshotStore, views: Callable[[], Sequence[View]], metrics: Metrics
    ) -> None:
        self._store = store
        self._views = views
        self._metrics = metrics
        self.activity = Activity()
        self._previous: Snapshot | None = None
        self._pending: float | None = None  # monotonic time of the oldest unbuilt change
        self._building: float | None = None
        self._origins: dict[str, float] = {}
        store.subscribe(self._published)

    def registry_changed(self, name: str) -> None:
        self.activity.registry_changed[name] = time.time()
        if self._pending is None:
            self._pending = time.monotonic()

    def rebuild_started(self) -> None:
        self._building, self._pending = self._pending, None

    def rebuild_ended(self, failed: bool) -> None:
        if failed and self._building is not None:
            self._pending = min(self._building, self._pending or math.inf)
        self._building = None

    def origin(self, snapshot: Snapshot) -> float | None:
        """When the oldest registry change this snapshot carries was reported (monotonic)."""
        return self._origins.get(snapshot.version)

    def _owner_lookup(self) -> Callable[[PackedResource], str]:
        """Which registry a ServiceEntry came from, where the snapshot does not say: the
        registries' current views, else the resource's own `registry` label."""
        # Only asked for what the snapshot does not attribute itself (a snapshot not built
        # on the one before): then worth one pass over the views.
        current: dict[str, str] = {}

        def owner(resource: PackedResource) -> str:
            if not current:
                for view in self._views():
                    for service in view.services:
                        current.setdefault(service.key, view.registry)  # config order wins
            found = current.get(resource.name)
            if found is None:
                found = resource.decode().metadata.labels.get("registry", "")
            return found

        return owner

    def _published(self) -> None:
        """The store's listener: runs on the loop right after each publish."""
        snapshot = self._store.snapshot
        if snapshot is None or snapshot is self._previous:
            return
        if self._building is not None:
            # the streams of a shard see that shard's snapshot: each changed one carries it
            previous = self._previous
            self._origins[snapshot.version] = self._building
            for n, parts in snapshot.layouts.items():
                for k, part in enumerate(parts):
                    if previous is None or part is not previous.part(n, k):
                        self._origins[part.version] = self._building
            kept = ORIGINS_KEPT * (1 + sum(snapshot.layouts))
            while len(self._origins) > kept:
                del self._origins[next(iter(self._origins))]
        previous, self._previous = self._previous, snapshot
        self.activity.published_at = time.time()
        self._metrics.last_publish.set(self.activity.published_at)
        # Described two loop turns from now: this runs inside the publish, before any stream
        # has been woken, and comparing a whole new set (10k names) takes milliseconds that
        # istiod would wait for. A callback scheduled now runs before the streams' wake-ups
        # (they are scheduled after this listener returns); the one it schedules runs after
        # them, once each woken stream has started writing the new set. In publish order.
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self._describe, previous, snapshot, self._owner_lookup())

    def _describe(
        self, previous: Snapshot | None, snapshot: Snapshot, owner: Callable[[PackedResource], str]
    ) -> None:
        """Log what a publish changed, and show it on the status page."""
        change = describe_change(previous, snapshot, owner)
        self.activity.last_change = change
        changes_log.info(change.summary(), extra=change.fields())
