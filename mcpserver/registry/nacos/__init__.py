"""The Nacos registry: Nacos 2.x/3.x over its gRPC protocol (subscriptions and pushes), 1.x
over the HTTP v1 API (polling); Dubbo on Nacos through the shared Dubbo mapping."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcpserver.registry.base import Kind, RegistryContext
from mcpserver.registry.nacos.config import NacosRegistrySettings

if TYPE_CHECKING:
    from mcpserver.registry.nacos.watcher import NacosRegistry


def _build(settings: NacosRegistrySettings, context: RegistryContext) -> NacosRegistry:
    # imported when a config uses this kind: the watcher and its clients stay out of the
    # start-up of every other configuration (see registry/kinds.py)
    from mcpserver.registry.nacos.watcher import NacosRegistry

    return NacosRegistry(settings, context.metrics, context.env)


KIND = Kind("nacos", NacosRegistrySettings, _build)
