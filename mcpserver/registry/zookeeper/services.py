"""Pure conversion of parsed ZooKeeper records into registry-neutral Services.

The conversion is the Dubbo mapping every registry shares (registry/dubbo/mapping.py); this
module names it as the ZooKeeper kind has always used it.
"""

from __future__ import annotations

from mcpserver.registry.dubbo.mapping import (
    MAX_WEIGHT,
    Member,
    application_service,
    from_millis,
    interface_host,
    interface_services,
    mapped_service,
    member,
    member_services,
)
from mcpserver.registry.dubbo.mapping import DubboOptions as ZkOptions

__all__ = [
    "MAX_WEIGHT",
    "Member",
    "ZkOptions",
    "application_service",
    "from_millis",
    "interface_host",
    "interface_services",
    "mapped_service",
    "member",
    "member_services",
]
