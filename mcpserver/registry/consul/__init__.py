"""The Consul registry: catalog and health blocking queries through py-consul's asyncio client."""

from __future__ import annotations

from mcpserver.registry.base import Kind, RegistryContext
from mcpserver.registry.consul.config import ConsulRegistrySettings
from mcpserver.registry.consul.watcher import ConsulRegistry


def _build(settings: ConsulRegistrySettings, context: RegistryContext) -> ConsulRegistry:
    return ConsulRegistry(settings, context.metrics, context.env)


KIND = Kind("consul", ConsulRegistrySettings, _build)
