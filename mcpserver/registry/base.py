"""The interface every registry implements, and the immutable view it publishes.

A registry watches its source and keeps a current View. Its change callback carries no data:
it only tells the debouncer "something changed"; the pipeline then reads every registry's
View. A View is replaced whole, never mutated, so the pipeline can read it from any task.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from mcpserver.model import Problem, Service


class Status(Enum):
    STARTING = "starting"  # no complete listing yet
    READY = "ready"  # watching, view is current
    DEGRADED = "degraded"  # source unreachable or unreadable; serving the last known view


@dataclass(frozen=True, slots=True)
class View:
    """A registry's services at one moment, and whether they are a complete listing."""

    registry: str
    services: tuple[Service, ...] = ()
    synced: bool = False
    status: Status = Status.STARTING
    detail: str = ""
    problems: tuple[Problem, ...] = ()


OnChange = Callable[[], None]


class Registry(abc.ABC):
    """One configured registry."""

    name: str

    @abc.abstractmethod
    async def start(self, on_change: OnChange) -> None:
        """Begin watching; call on_change (on the event loop) whenever view() changes."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop watching and release connections."""

    @abc.abstractmethod
    def view(self) -> View:
        """The current immutable view."""
