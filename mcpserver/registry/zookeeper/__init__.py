"""The ZooKeeper registry: Dubbo providers (interface- and application-level) and Curator
service discovery (Spring Cloud Zookeeper), watched with a ZooKeeper client of our own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcpserver.registry.kind import Kind, RegistryContext
from mcpserver.registry.zookeeper.config import ZooKeeperRegistrySettings

if TYPE_CHECKING:
    from mcpserver.registry.zookeeper.watcher import ZooKeeperRegistry


def _build(settings: ZooKeeperRegistrySettings, context: RegistryContext) -> ZooKeeperRegistry:
    # imported when a config uses this kind: the watcher and its client stay out of the
    # start-up of every other configuration (see registry/kinds.py)
    from mcpserver.registry.zookeeper.watcher import ZooKeeperRegistry

    return ZooKeeperRegistry(settings, context.metrics, context.env)


# Providers whose sessions expired learn it when they reconnect, and only then re-create
# their ephemeral nodes (Curator on RECONNECTED; Dubbo's FailbackRegistry retrying every
# 5 s); their reconnects follow their own retry policies (Curator's exponential backoff
# climbs to tens of seconds). 60 s.
KIND = Kind("zookeeper", ZooKeeperRegistrySettings, _build, recovery_grace=60.0)
