"""The Consul registry: catalog and health blocking queries through py-consul's asyncio client."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcpserver.registry.base import Kind, RegistryContext
from mcpserver.registry.consul.config import ConsulRegistrySettings

if TYPE_CHECKING:
    from mcpserver.registry.consul.watcher import ConsulRegistry


def _build(settings: ConsulRegistrySettings, context: RegistryContext) -> ConsulRegistry:
    # imported when a config uses this kind: the watcher and py-consul stay out of the
    # start-up of every other configuration (see registry/kinds.py)
    from mcpserver.registry.consul.watcher import ConsulRegistry

    return ConsulRegistry(settings, context.metrics, context.env)


KIND = Kind("consul", ConsulRegistrySettings, _build)
