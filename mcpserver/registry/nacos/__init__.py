"""The Nacos registry: Nacos 2.x/3.x over its gRPC protocol (subscriptions and pushes), 1.x
over the HTTP v1 API (polling); Dubbo on Nacos through the shared Dubbo mapping."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcpserver.registry.kind import Kind, RegistryContext
from mcpserver.registry.nacos.config import NacosRegistrySettings

if TYPE_CHECKING:
    from mcpserver.registry.nacos.watcher import NacosRegistry


def _build(settings: NacosRegistrySettings, context: RegistryContext) -> NacosRegistry:
    # imported when a config uses this kind: the watcher and its clients stay out of the
    # start-up of every other configuration (see registry/kinds.py)
    from mcpserver.registry.nacos.watcher import NacosRegistry

    return NacosRegistry(settings, context.metrics, context.env)


# A restarted Nacos (or a lost connection) loses ephemeral instances until their clients
# register again: the 2.x client notices with its 5 s health check, reconnects and redoes
# every registration at once, its redo task retrying every 3 s; a 1.x client re-registers
# when a 5 s heartbeat answers "not found". 30 s covers a few rounds of either.
KIND = Kind("nacos", NacosRegistrySettings, _build, recovery_grace=30.0)
