"""The one place the current snapshot lives, and the wake-up for every stream.

The store starts unprimed: until the pipeline publishes its first complete snapshot, streams
must not answer (an empty answer after a restart would delete everything istiod holds).
"""

from __future__ import annotations

from collections.abc import Callable

from mcpserver.xds.snapshot import Snapshot

Listener = Callable[[], None]


class SnapshotStore:
    """Holds the latest snapshot; listeners are called (on the loop) after each publish."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._listeners: list[Listener] = []

    @property
    def snapshot(self) -> Snapshot | None:
        """The latest snapshot, or None while unprimed."""
        return self._snapshot

    def publish(self, snapshot: Snapshot) -> None:
        """Replace the snapshot and wake every subscriber (they read the latest one)."""
        self._snapshot = snapshot
        for listener in tuple(self._listeners):
            listener()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Register a wake-up callback; returns the function that removes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe
