"""The ZooKeeper registry: Dubbo providers (interface- and application-level) and Curator
service discovery (Spring Cloud Zookeeper), watched with kazoo."""

from __future__ import annotations

from mcpserver.registry.base import Kind, RegistryContext
from mcpserver.registry.zookeeper.config import ZooKeeperRegistrySettings
from mcpserver.registry.zookeeper.watcher import ZooKeeperRegistry


def _build(settings: ZooKeeperRegistrySettings, context: RegistryContext) -> ZooKeeperRegistry:
    return ZooKeeperRegistry(settings, context.metrics, context.env)


KIND = Kind("zookeeper", ZooKeeperRegistrySettings, _build)
