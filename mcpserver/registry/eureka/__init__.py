"""The Eureka registry: Spring Cloud Netflix / Netflix Eureka servers read over their REST
API, a full fetch then deltas reconciled by Eureka's own hash, as Eureka's Java client does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcpserver.registry.eureka.config import EurekaRegistrySettings
from mcpserver.registry.kind import Kind, RegistryContext

if TYPE_CHECKING:
    from mcpserver.registry.eureka.watcher import EurekaRegistry


def _build(settings: EurekaRegistrySettings, context: RegistryContext) -> EurekaRegistry:
    # imported when a config uses this kind: the watcher and its client stay out of the
    # start-up of every other configuration (see registry/kinds.py)
    from mcpserver.registry.eureka.watcher import EurekaRegistry

    return EurekaRegistry(settings, context.metrics, context.env)


# A restarted Eureka server learns its instances back from their renewals: each client
# renews every 30 s and registers again when the renewal answers 404; Eureka's read-only
# response cache (on by default) then shows it in /apps up to 30 s later; our poll adds
# poll_interval (5 s). 90 s covers that with margin.
KIND = Kind("eureka", EurekaRegistrySettings, _build, recovery_grace=90.0)
