"""What a registry changed since its last view, by identity: the `Change` it publishes and
the `Ledger` that keeps it; and `keep_empty`, what a registry keeps of a Service whose last
instance left.

Apart from base.py because it is pure (no event loop, no I/O): the ZooKeeper assembly, which
may import neither, keeps its delta with the same ledger the watchers use.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, replace

from mcpserver.model import Service


@dataclass(frozen=True, slots=True)
class Change:
    """What a registry changed, for `publish()`: relative to the services tuple `since`
    (ignored unless that is what the view shows now)."""

    since: tuple[Service, ...]
    removed: Iterable[Service]
    added: Iterable[Service]


class Ledger:
    """One registry's Services by identity, and which of them left and came since its last
    view: what every kind that knows what it changed keeps, written once.

    A registry made of parts (a Consul service, a Cloud Map service, a Nacos service, a
    ZooKeeper key) says, for each part that changed, which Services it showed and which it
    shows now (`replace`); `take()` then gives the `Change` to publish and starts the next
    one. A Service that left and came back before the next view (moved between parts, or a
    part that was replaced twice) is neither removed nor added; one that is in both `old`
    and `new` did not change. Work is per changed part, never over every Service: an
    update of one of 10k services must not walk the others. Identity (id()) is what the
    pipeline compares, and the ledger keeps every Service it names alive, so ids stay
    unique while it holds them."""

    __slots__ = ("_added", "_removed", "_shown")

    def __init__(self) -> None:
        self._shown: dict[int, Service] = {}  # every Service shown now, in arrival order
        self._removed: dict[int, Service] = {}  # since the last take()
        self._added: dict[int, Service] = {}

    def replace(self, old: Iterable[Service], new: Iterable[Service]) -> None:
        """One part showed `old` and now shows `new` (either may be empty)."""
        before = {id(s): s for s in old}
        after = {id(s): s for s in new}
        for key, service in before.items():
            if key in after:
                continue
            self._shown.pop(key, None)
            if self._added.pop(key, None) is None:
                self._removed[key] = service
        for key, service in after.items():
            if key in before:
                continue
            self._shown[key] = service
            if self._removed.pop(key, None) is None:
                self._added[key] = service

    def services(self) -> tuple[Service, ...]:
        """Every Service shown now (one copy of a dict's values, in C)."""
        return tuple(self._shown.values())

    def pending(self) -> bool:
        """Whether anything left or came since the last take()."""
        return bool(self._removed or self._added)

    def take(self, since: tuple[Service, ...]) -> Change:
        """What left and came since the last take(), relative to `since` (what the view
        shows now), and start afresh."""
        change = Change(since, tuple(self._removed.values()), tuple(self._added.values()))
        self._removed, self._added = {}, {}
        return change


def keep_empty(
    old: Iterable[Service], new: Sequence[Service], listed: Container[str] | None = None
) -> list[Service]:
    """`keep_when_empty` for a registry that builds Services from instances: what one part
    (a Consul service, a Nacos service, a Cloud Map service) makes now, plus each Service it
    made before that is gone from `new` only because no instance is left, kept without
    instances, so the pipeline keeps serving it (hosts, ports, address) to istiod.

    Only while the registry still has the service: the caller drops the part when its
    registry stops listing it, and `listed` (names of Services the registry still lists
    within the part; None: all) says which hosts of the part are still there. A Service
    already kept empty is the same object again, so nothing changes for the pipeline."""
    names = {s.name for s in new}
    kept = [
        s if not s.instances else replace(s, instances=())
        for s in old
        if s.name not in names and (listed is None or s.name in listed)
    ]
    return [*new, *kept] if kept else list(new)
