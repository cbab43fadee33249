"""The one place the current snapshot lives, and the wake-up for every stream.

The store starts unprimed: until the pipeline publishes its first complete snapshot, streams
must not answer (an empty answer after a restart would delete everything istiod holds).

A shard's streams (server.shards, xds/shards.py) read the same store through a `ShardStore`,
which wakes them only when their part changed: a change to one service then costs the streams
of one shard, not every stream of every shard.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from mcpserver.xds.snapshot import Snapshot

Listener = Callable[[], None]


class SnapshotSource(Protocol):
    """What a stream reads: the latest snapshot it serves, and a wake-up when it changes."""

    @property
    def snapshot(self) -> Snapshot | None: ...

    def subscribe(self, listener: Listener) -> Callable[[], None]: ...


class Listeners:
    """Wake-up callbacks, called in the order they subscribed."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def __len__(self) -> int:
        return len(self._listeners)

    def call(self) -> None:
        for listener in tuple(self._listeners):
            listener()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Register a wake-up callback; returns the function that removes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe


class SnapshotStore:
    """Holds the latest snapshot; listeners are called (on the loop) after each publish."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._listeners = Listeners()

    @property
    def snapshot(self) -> Snapshot | None:
        """The latest snapshot, or None while unprimed."""
        return self._snapshot

    def publish(self, snapshot: Snapshot) -> None:
        """Replace the snapshot and wake every subscriber (they read the latest one)."""
        self._snapshot = snapshot
        self._listeners.call()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Register a wake-up callback; returns the function that removes it."""
        return self._listeners.subscribe(listener)


class ShardStore:
    """Shard `shard` of layout `shards`, read from `store`: its listeners are woken only when
    a publish changed that shard's snapshot (an unchanged shard is the same object)."""

    def __init__(self, store: SnapshotStore, shards: int, shard: int) -> None:
        self._store = store
        self.shards = shards
        self.shard = shard
        self._seen: Snapshot | None = None
        self._listeners = Listeners()
        store.subscribe(self._published)

    @property
    def snapshot(self) -> Snapshot | None:
        whole = self._store.snapshot
        return None if whole is None else whole.part(self.shards, self.shard)

    def _published(self) -> None:
        current = self.snapshot
        if current is not self._seen:
            self._seen = current
            self._listeners.call()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        return self._listeners.subscribe(listener)
