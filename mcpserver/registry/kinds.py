"""The kind table: every registry kind, by the name its config entries use.

Adding a kind means adding its package (config model, pure parser, watcher, a `KIND`) and one
line here; settings, the app, check-config and the admin pages read everything else from the
table. Tests register kinds of their own with `register()`.
"""

from __future__ import annotations

from typing import Any

from mcpserver.config import RegistrySettings
from mcpserver.registry import cloudmap, consul, eureka, nacos, static, zookeeper
from mcpserver.registry.kind import Kind

KINDS: dict[str, Kind[Any]] = {}


def register(kind: Kind[Any]) -> None:
    """Add a kind; its settings model's `kind` field must be Literal[kind.name]."""
    existing = KINDS.get(kind.name)
    if existing is not None and existing is not kind:
        raise ValueError(f"registry kind {kind.name!r} is registered twice")
    KINDS[kind.name] = kind


def kind_of(settings: RegistrySettings) -> Kind[Any]:
    return KINDS[settings.kind]


for _kind in (static.KIND, zookeeper.KIND, consul.KIND, nacos.KIND, eureka.KIND, cloudmap.KIND):
    register(_kind)
