"""What the kind table (registry/kinds.py) holds for each registry kind, and what a kind is
given to build a registry: the types that tie a kind's package to the server.

Apart from base.py because it is declarations only: check-config reads a kind's
`offline` view without running anything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from mcpserver.config import RegistrySettings
from mcpserver.registry.view import View

if TYPE_CHECKING:  # types only: a kind's declaration runs nothing
    from mcpserver.metrics import Metrics
    from mcpserver.registry.base import Registry


@dataclass(frozen=True, slots=True)
class RegistryContext:
    """What every registry is built with besides its own settings."""

    metrics: Metrics
    env: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class OfflineView:
    """What `check-config` can learn about a registry without its live source: a view to
    convert and validate exactly as `serve` would, where each service came from (for
    messages), and problems that make the whole source unusable."""

    view: View | None = None
    locations: Mapping[str, str] | None = None  # service key -> where it is defined
    origin: str = ""  # where the registry's records come from (a file), for other problems
    errors: tuple[str, ...] = ()


S = TypeVar("S", bound=RegistrySettings)


@dataclass(frozen=True, slots=True)
class Kind(Generic[S]):
    """One registry kind, as registered in the kind table (registry/kinds.py): its settings
    model (whose `kind` literal names it), how to build a running registry from them, and
    optionally what check-config can learn about it without a live source."""

    name: str
    settings: type[S]
    build: Callable[[S, RegistryContext], Registry]
    offline: Callable[[S, RegistryContext], OfflineView] | None = None
    recovery_grace: float = 0.0
    """Seconds protection holds removals after the source came back (`Recovery`) by
    default: how long this kind's clients take to register again (docs/operations.md "What
    mcpserver does when things go wrong" says why each kind's is what it is)."""
