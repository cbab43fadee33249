"""Pure parsing of Curator service-discovery instances: `/services/<name>/<id>` JSON.

Dubbo 3 application-level registration and Spring Cloud Zookeeper both write Curator's
ServiceInstance JSON: name, id, address, port, sslPort and a payload whose `metadata` map
carries, for Dubbo, `dubbo.endpoints` (the protocols and ports the instance serves).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mcpserver.registry.zookeeper.dubbo import RecordError, check_host

MAX_INSTANCE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Endpoint:
    protocol: str
    port: int


@dataclass(frozen=True, slots=True)
class CuratorInstance:
    name: str
    id: str
    address: str
    endpoints: tuple[Endpoint, ...]
    metadata: tuple[tuple[str, str], ...]
    dubbo: bool


def _port(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise RecordError("bad-port", f"{what} {value!r}")
    return value


def _dubbo_endpoints(raw: str) -> tuple[Endpoint, ...]:
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
        found.append(Endpoint(item["protocol"].lower(), _port(item.get("port"), "endpoint port")))
    return tuple(found)


def parse_instance(data: bytes, default_protocol: str) -> CuratorInstance:
    """One instance znode's data, or RecordError."""
    if len(data) > MAX_INSTANCE_BYTES:
        raise RecordError("too-long", f"{len(data)} bytes")
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise RecordError("not-utf8", "instance data is not UTF-8") from None
    except json.JSONDecodeError as err:
        raise RecordError("bad-json", str(err)) from None
    if not isinstance(doc, dict):
        raise RecordError("bad-json", "instance is not a JSON object")
    name, ident, address = doc.get("name"), doc.get("id"), doc.get("address")
    if not isinstance(name, str) or not isinstance(address, str):
        raise RecordError("bad-json", "instance without name or address")
    payload = doc.get("payload") if isinstance(doc.get("payload"), dict) else {}
    raw_meta = payload.get("metadata") if isinstance(payload, dict) else None
    metadata = {str(k): str(v) for k, v in (raw_meta.items() if isinstance(raw_meta, dict) else [])}
    dubbo = "dubbo.endpoints" in metadata
    if dubbo:
        endpoints = _dubbo_endpoints(metadata["dubbo.endpoints"])
    else:
        endpoints = ()
        if doc.get("port") is not None:
            endpoints += (Endpoint(default_protocol, _port(doc.get("port"), "port")),)
        if doc.get("sslPort") is not None:
            endpoints += (Endpoint("https", _port(doc.get("sslPort"), "sslPort")),)
    if not endpoints:
        raise RecordError("bad-port", "instance has no port")
    return CuratorInstance(
        name=name,
        id=str(ident or f"{address}"),
        # Dubbo writes IPv6 addresses in URL brackets ("[::1]")
        address=check_host(address.removeprefix("[").removesuffix("]")),
        endpoints=endpoints,
        metadata=tuple(sorted(metadata.items())),
        dubbo=dubbo,
    )
