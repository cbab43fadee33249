"""One registry's services by key, versioned: what every kind publishes through.

A kind reduces its source to parts (a Consul service, a Nacos service, a Eureka app, a
ZooKeeper key, a file) and says, when one changes, what it shows now: `replace(part,
services, problems)`. The table compares them with what the part showed, key by key (equal
by value is no change, and the old object stays, so the builder's caches hold), and notes
the keys that changed. `commit()` closes one revision with those keys: changes keyed by
name, batched, one revision per batch, as go-control-plane's `LinearCache.UpdateResources`
(pkg/cache/v3/linear.go). Work is per changed part; per revision, the key map and the
services tuple are copied (in C), and only when something changed.

`keep_when_empty` lives here: a part still listed whose Service lost its last instance
keeps it without instances (`keep_empty`), so istiod keeps its host, ports and address; a
dropped part takes its Services with it. Two parts may show one key (two ZooKeeper roots
with one interface, Consul names that sanitize alike): both are kept, the view shows one
(view.precedence) and shadows the others, and the merge withholds all but one.

Pure: the Registry base owns one, on its event loop.
"""

from __future__ import annotations

import itertools
from collections.abc import Container, Hashable, Iterable, KeysView, Sequence
from dataclasses import replace
from types import MappingProxyType

from mcpserver.model import Problem, Service
from mcpserver.registry.view import NO_SHADOWS, Revision, View, precedence

LOG_LIMIT = 4096
"""Keys a table's log may name before it starts a new one."""
LOG_MIN = 64
"""Keys a table's log may always name, however few services the table has."""

_serials = itertools.count(1)

Part = Hashable
Slot = Hashable
"""Which Service under a key: its part, or (part, (key, n)) for a key's n-th repeat in it."""


class ServiceTable:
    """One registry's Services by part and by key, and the keys changed since the last
    revision. Not thread-safe: the registry's event loop owns it."""

    def __init__(self, keep_when_empty: bool = False) -> None:
        self.keep_when_empty = keep_when_empty
        self._serial = next(_serials)
        self._parts: dict[Part, tuple[Service, ...]] = {}
        self._problems: dict[Part, tuple[Problem, ...]] = {}
        self._entries: dict[str, Service] = {}  # key -> the Service shown under it
        self._slots: dict[str, Slot] = {}  # key -> the slot of that Service
        self._shared: dict[str, dict[Slot, Service]] = {}  # keys shown by several slots
        self._changed: set[str] = set()
        self._problems_changed = False
        self._handed = False  # the last view holds _entries: copy it before a change
        self._last = View("", table=self._serial)

    def parts(self) -> KeysView[Part]:
        """The parts that show a Service now."""
        return self._parts.keys()

    def pending(self) -> bool:
        """Whether anything changed since the last commit."""
        return bool(self._changed) or self._problems_changed

    def replace(
        self,
        part: Part,
        services: Iterable[Service],
        problems: Iterable[Problem] = (),
        *,
        listed: bool | Container[str] = True,
    ) -> None:
        """`part` shows `services` (and `problems`) now. `listed`: whether the registry
        still lists the part (with keep_when_empty, a Service it lacks now only for want of
        instances stays, without them); a container: the names still listed in it."""
        old = self._parts.get(part, ())
        new = tuple(services)
        if self.keep_when_empty and listed is not False and old:
            new = tuple(keep_empty(old, new, None if listed is True else listed))
        problems = tuple(problems)
        if problems != self._problems.get(part, ()):
            self._problems_changed = True
            self._problems[part] = problems
            if not problems:
                del self._problems[part]
        if old or new:
            self._parts[part] = self._update(part, old, new)
            if not new:
                del self._parts[part]

    def drop(self, part: Part) -> None:
        """The registry no longer lists `part`: its Services and problems go."""
        self.replace(part, (), (), listed=False)

    def retain(self, keep: Container[Part]) -> None:
        """Drop every part not in `keep` (a full re-listing). O(parts)."""
        for part in [p for p in itertools.chain(self._parts, self._problems) if p not in keep]:
            self.drop(part)

    def commit(self) -> View:
        """What the table shows now (a View of no registry: the Registry base names it),
        the keys changed since the last commit logged under a new revision; the same view
        again if nothing changed."""
        last = self._last
        if not self.pending() and last.revision:
            return last
        changes: dict[str, object] = {}
        if self._changed or not last.revision:
            keys = tuple(self._changed)
            logged = (last.log.logged if last.log is not None else 0) + len(keys)
            before = (
                last.log if logged <= min(LOG_LIMIT, max(LOG_MIN, len(self._entries))) else None
            )
            shadowed = NO_SHADOWS
            if self._shared:
                shadowed = MappingProxyType(
                    {
                        key: tuple(s for slot, s in group.items() if slot != self._slots[key])
                        for key, group in self._shared.items()
                    }
                )
            services = tuple(self._entries.values())
            changes = {
                "revision": last.revision + 1,
                "log": Revision(last.revision + 1, keys, before, logged if before else len(keys)),
                "services": services + tuple(itertools.chain.from_iterable(shadowed.values())),
                "by_key": MappingProxyType(self._entries),
                "shadowed": shadowed,
            }
            self._changed, self._handed = set(), True
        if self._problems_changed:
            changes["problems"] = tuple(itertools.chain.from_iterable(self._problems.values()))
            self._problems_changed = False
        self._last = replace(last, **changes)  # type: ignore[arg-type]
        return self._last

    def _update(
        self, part: Part, old: tuple[Service, ...], new: tuple[Service, ...]
    ) -> tuple[Service, ...]:
        """Move the entries of `part` from `old` to `new`; returns `new` with each Service
        equal to the one before replaced by that one."""
        if len(old) == 1 and len(new) == 1 and old[0].key == new[0].key:  # nearly always
            if old[0] is new[0] or old[0] == new[0]:
                return old
            self._set(part, new[0].key, new[0])
            return new
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
            self._entries, self._handed = self._entries.copy(), False  # copy(): fast in C
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
        group.pop(slot, None)
        if service is not None:
            group[slot] = service
        if len(group) < 2:
            del shared[key]
        if not group:
            del entries[key], slots[key]
            return
        slots[key], entries[key] = min(group.items(), key=lambda item: precedence(item[1]))


def _slotted(services: tuple[Service, ...]) -> dict[Hashable, Service]:
    """One part's Services by key; the n-th repeat of a key within the part by (key, n)."""
    slotted: dict[Hashable, Service] = {s.key: s for s in services}
    if len(slotted) < len(services):
        slotted, seen = {}, dict[str, int]()
        for service in services:
            n = seen[service.key] = seen.get(service.key, -1) + 1
            slotted[(service.key, n) if n else service.key] = service
    return slotted


def keep_empty(
    old: Iterable[Service], new: Sequence[Service], listed: Container[str] | None = None
) -> list[Service]:
    """`keep_when_empty` for one part: what it makes now, plus each Service it made before
    that is gone from `new` only because no instance is left, kept without instances.
    `listed` (names still listed within the part; None: all) says which are still there.
    A Service already kept empty is the same object again."""
    names = {s.name for s in new}
    kept = [
        s if not s.instances else replace(s, instances=())
        for s in old
        if s.name not in names and (listed is None or s.name in listed)
    ]
    return [*new, *kept] if kept else list(new)
