"""The Consul registry: catalog and health blocking queries through py-consul's asyncio client."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcpserver.registry.consul.config import ConsulRegistrySettings
from mcpserver.registry.kind import Kind, RegistryContext

if TYPE_CHECKING:
    from mcpserver.registry.consul.watcher import ConsulRegistry


def _build(settings: ConsulRegistrySettings, context: RegistryContext) -> ConsulRegistry:
    # imported when a config uses this kind: the watcher and py-consul stay out of the
    # start-up of every other configuration (see registry/kinds.py)
    from mcpserver.registry.consul.watcher import ConsulRegistry

    return ConsulRegistry(settings, context.metrics, context.env)


# A catalog that lost registrations (a server restarted without its data, an agent
# restarted) gets them back from each agent's anti-entropy sync, once a minute on clusters
# up to 128 nodes (agent/ae: longer on larger ones), plus its stagger: 90 s.
KIND = Kind("consul", ConsulRegistrySettings, _build, recovery_grace=90.0)
