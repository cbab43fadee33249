"""One registry's services by key, versioned: what every kind publishes through.

A kind reduces its source to parts (a Consul service, a Nacos service, a Eureka app, a
ZooKeeper key, a file) and says, whenever one changes, what it shows now:
`replace(part, services, problems)`. The table compares the part's Services with what it
showed before, key by key (equal by value is no change, and keeps the old object, so the
builder's caches hold), and notes the keys that changed. `commit()` then closes one
revision, with the keys it changed, and gives what a View is made of: changes keyed by
name, batched, one revision per batch, as go-control-plane's `LinearCache.UpdateResources`
(pkg/cache/v3/linear.go). Work is per changed part; the one O(all) step per revision is
copying the key map and the services tuple (in C), and only when something changed.

`keep_when_empty` lives here: a part still listed whose Service lost its last instance
keeps that Service without instances (`keep_empty`), so istiod keeps its host, ports and
address; a part dropped (`drop`, `retain`) takes its Services with it.

Two parts may show a Service under one key (two ZooKeeper roots with one interface, two
Consul services whose names sanitize alike): the table keeps both, shows one in `by_key`
(view.precedence) and the others as shadowed, and the merge withholds all but one.

Pure (no event loop, no I/O): the Registry base owns one; the ZooKeeper assembly, which
runs in a worker thread, uses `keep_empty` too.
"""

from __future__ import annotations

import itertools
from collections.abc import Container, Hashable, Iterable, KeysView, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from mcpserver.model import Problem, Service
from mcpserver.registry.view import NO_SHADOWS, Revision, precedence

LOG_LIMIT = 4096
"""Keys a table's log may name before it starts a new one."""
LOG_MIN = 64
"""Keys a table's log may always name, however few services the table has."""

_serials = itertools.count(1)

Part = Hashable
Slot = Hashable
"""Which of the Services under one key: its part, or (part, (key, n)) for the n-th repeat
of the key within one part."""


@dataclass(frozen=True, slots=True)
class Contents:
    """What one revision of a table shows (a View is made of it)."""

    table: int
    revision: int
    services: tuple[Service, ...]
    by_key: Mapping[str, Service]
    shadowed: Mapping[str, tuple[Service, ...]]
    problems: tuple[Problem, ...]
    log: Revision | None


class ServiceTable:
    """One registry's Services, by part and by key, and the keys changed since the last
    revision. Not thread-safe: the registry's event loop owns it."""

    def __init__(self, keep_when_empty: bool = False) -> None:
        self.keep_when_empty = keep_when_empty
        self._serial = next(_serials)
        self._revision = 0
        self._parts: dict[Part, tuple[Service, ...]] = {}
        self._problems: dict[Part, tuple[Problem, ...]] = {}
        self._entries: dict[str, Service] = {}  # key -> the Service shown under it
        self._slots: dict[str, Slot] = {}  # key -> the slot of that Service
        self._shared: dict[str, dict[Slot, Service]] = {}  # keys shown by several slots
        self._changed: set[str] = set()
        self._problems_changed = False
        self._handed = False  # the last Contents holds _entries: copy before changing it
        self._log: Revision | None = None
        self._last: Contents | None = None

    # ------------------------------------------------------------------ reading

    @property
    def revision(self) -> int:
        return self._revision

    def parts(self) -> KeysView[Part]:
        """The parts that show a Service now."""
        return self._parts.keys()

    def part(self, part: Part) -> tuple[Service, ...]:
        """What `part` shows now (after keep_when_empty)."""
        return self._parts.get(part, ())

    def pending(self) -> bool:
        """Whether anything changed since the last commit."""
        return bool(self._changed) or self._problems_changed

    # ------------------------------------------------------------------ writing

    def replace(
        self,
        part: Part,
        services: Iterable[Service],
        problems: Iterable[Problem] = (),
        *,
        listed: bool | Container[str] = True,
    ) -> bool:
        """`part` shows `services` (and `problems`) now. `listed`: whether the registry
        still lists the part, so that with keep_when_empty a Service it showed before and
        lacks now only for want of instances stays, without them; a container: the names
        still listed within the part. True if anything changed."""
        old = self._parts.get(part, ())
        new = tuple(services)
        if self.keep_when_empty and listed is not False and old:
            new = tuple(keep_empty(old, new, None if listed is True else listed))
        problems = tuple(problems)
        if problems != self._problems.get(part, ()):
            self._problems_changed = True
            if problems:
                self._problems[part] = problems
            else:
                self._problems.pop(part, None)
        if not old and not new:
            return self._problems_changed
        kept = self._update(part, old, new)
        if kept:
            self._parts[part] = kept
        else:
            self._parts.pop(part, None)
        return bool(self._changed) or self._problems_changed

    def drop(self, part: Part) -> None:
        """The registry no longer lists `part`: its Services and problems go."""
        self.replace(part, (), (), listed=False)

    def retain(self, keep: Container[Part]) -> None:
        """Drop every part not in `keep` (a full re-listing). O(parts)."""
        for part in [p for p in itertools.chain(self._parts, self._problems) if p not in keep]:
            self.drop(part)

    def commit(self) -> Contents:
        """Close the revision: what the table shows now, with the keys changed since the
        last commit logged under a new revision number (the same contents again if nothing
        changed)."""
        last = self._last
        if last is not None and not self.pending():
            return last
        if self._changed or last is None:
            self._revision += 1
            keys = tuple(self._changed)
            logged = (self._log.logged if self._log is not None else 0) + len(keys)
            limit = min(LOG_LIMIT, max(LOG_MIN, len(self._entries)))
            before = self._log if logged <= limit else None
            if before is None:
                logged = len(keys)
            self._log = Revision(self._revision, keys, before, logged)
            self._changed = set()
            services = tuple(self._entries.values())
            shadowed: Mapping[str, tuple[Service, ...]] = NO_SHADOWS
            if self._shared:
                shadowed = MappingProxyType(
                    {
                        key: tuple(s for slot, s in slots.items() if slot != self._slots[key])
                        for key, slots in self._shared.items()
                    }
                )
                services += tuple(itertools.chain.from_iterable(shadowed.values()))
            by_key: Mapping[str, Service] = MappingProxyType(self._entries)
            self._handed = True
        else:
            assert last is not None
            services, by_key, shadowed = last.services, last.by_key, last.shadowed
        problems = last.problems if last is not None and not self._problems_changed else ()
        if self._problems_changed or last is None:
            problems = tuple(itertools.chain.from_iterable(self._problems.values()))
            self._problems_changed = False
        self._last = Contents(
            self._serial, self._revision, services, by_key, shadowed, problems, self._log
        )
        return self._last

    # ---------------------------------------------------------------- internals

    def _update(
        self, part: Part, old: tuple[Service, ...], new: tuple[Service, ...]
    ) -> tuple[Service, ...]:
        """Move the entries of `part` from `old` to `new`; returns `new` with each Service
        equal to the one before replaced by that one."""
        before = _slotted(old)
        kept: list[Service] = []
        for within, service in _slotted(new).items():
            previous = before.pop(within, None)
            if previous is not None and (previous is service or previous == service):
                kept.append(previous)
                continue
            kept.append(service)
            self._set(part if isinstance(within, str) else (part, within), service.key, service)
        for within, service in before.items():
            self._set(part if isinstance(within, str) else (part, within), service.key, None)
        return tuple(kept)

    def _set(self, slot: Slot, key: str, service: Service | None) -> None:
        """Put (None: remove) the Service of `slot` under `key`."""
        if self._handed:
            self._entries = dict(self._entries)
            self._handed = False
        self._changed.add(key)
        entries, slots, shared = self._entries, self._slots, self._shared
        group = shared.get(key)
        if group is None:
            if service is None:
                if slots.get(key) == slot:
                    del entries[key], slots[key]
                return
            if key not in entries or slots[key] == slot:
                entries[key], slots[key] = service, slot
                return
            group = shared[key] = {slots[key]: entries[key]}
        if service is None:
            group.pop(slot, None)
        else:
            group[slot] = service
        if len(group) == 1:
            del shared[key]
        if not group:
            del entries[key], slots[key]
            return
        slot, entries[key] = min(group.items(), key=lambda item: precedence(item[1]))
        slots[key] = slot


def _slotted(services: tuple[Service, ...]) -> dict[Hashable, Service]:
    """One part's Services by key; the n-th repeat of a key within the part by (key, n)."""
    slotted: dict[Hashable, Service] = {s.key: s for s in services}
    if len(slotted) == len(services):
        return slotted
    slotted = {}
    seen: dict[str, int] = {}
    for service in services:
        key = service.key
        n = seen[key] = seen.get(key, -1) + 1
        slotted[(key, n) if n else key] = service
    return slotted


def keep_empty(
    old: Iterable[Service], new: Sequence[Service], listed: Container[str] | None = None
) -> list[Service]:
    """`keep_when_empty` for one part: what it makes now, plus each Service it made before
    that is gone from `new` only because no instance is left, kept without instances.
    `listed` (names of Services the registry still lists within the part; None: all) says
    which are still there. A Service already kept empty is the same object again."""
    names = {s.name for s in new}
    kept = [
        s if not s.instances else replace(s, instances=())
        for s in old
        if s.name not in names and (listed is None or s.name in listed)
    ]
    return [*new, *kept] if kept else list(new)
