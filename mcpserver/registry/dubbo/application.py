"""A Dubbo 3 application instance, whichever registry it was read from.

Dubbo 3 application-level registration writes one instance per application process: its
address and a metadata map whose `dubbo.endpoints` names the protocols and ports it serves.
ZooKeeper keeps it as Curator ServiceInstance JSON (registry/zookeeper/curator.py parses it);
Nacos keeps it as a naming instance with the same metadata. Spring Cloud services in either
registry have the same shape without `dubbo.endpoints`. Both reduce to an `AppInstance`, so
one mapping (dubbo/mapping.py, `application_service`) serves both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mcpserver.registry.dubbo.provider import RecordError


@dataclass(frozen=True, slots=True)
class Endpoint:
    protocol: str
    port: int


@dataclass(frozen=True, slots=True)
class AppInstance:
    name: str
    id: str
    address: str
    endpoints: tuple[Endpoint, ...]
    metadata: tuple[tuple[str, str], ...]
    dubbo: bool


def check_port(value: object, what: str) -> int:
    """A port number as JSON gives it, or RecordError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise RecordError("bad-port", f"{what} {value!r}")
    return value


def dubbo_endpoints(raw: str) -> tuple[Endpoint, ...]:
    """Dubbo's `dubbo.endpoints` metadata: a JSON list of {protocol, port}."""
    try:
        items = json.loads(raw)
    except json.JSONDecodeError:
        raise RecordError("bad-json", "dubbo.endpoints is not JSON") from None
    if not isinstance(items, list):
        raise RecordError("bad-json", "dubbo.endpoints is not a list")
    found = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("protocol"), str):
            raise RecordError("bad-json", "dubbo.endpoints entry without protocol")
        found.append(
            Endpoint(item["protocol"].lower(), check_port(item.get("port"), "endpoint port"))
        )
    return tuple(found)
