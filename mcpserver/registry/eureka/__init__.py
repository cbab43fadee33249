"""The Eureka registry: Spring Cloud Netflix / Netflix Eureka servers read over their REST
API, a full fetch then deltas reconciled by Eureka's own hash, as Eureka's Java client does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcpserver.registry.base import Kind, RegistryContext
from mcpserver.registry.eureka.config import EurekaRegistrySettings

if TYPE_CHECKING:
    from mcpserver.registry.eureka.watcher import EurekaRegistry


def _build(settings: EurekaRegistrySettings, context: RegistryContext) -> EurekaRegistry:
    # imported when a config uses this kind: the watcher and its client stay out of the
    # start-up of every other configuration (see registry/kinds.py)
    from mcpserver.registry.eureka.watcher import EurekaRegistry

    return EurekaRegistry(settings, context.metrics, context.env)


KIND = Kind("eureka", EurekaRegistrySettings, _build)
