"""Pure parsing of Curator service-discovery instances: `/services/<name>/<id>` JSON.

Dubbo 3 application-level registration and Spring Cloud Zookeeper both write Curator's
ServiceInstance JSON: name, id, address, port, sslPort and a payload whose `metadata` map
carries, for Dubbo, `dubbo.endpoints` (the protocols and ports the instance serves).
"""

from __future__ import annotations

import json

from mcpserver.registry.dubbo.application import AppInstance as CuratorInstance
from mcpserver.registry.dubbo.application import Endpoint
from mcpserver.registry.dubbo.application import check_port as _port
from mcpserver.registry.dubbo.application import dubbo_endpoints as _dubbo_endpoints
from mcpserver.registry.dubbo.provider import RecordError, check_host

MAX_INSTANCE_BYTES = 1024 * 1024


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
            ssl_port = _port(doc.get("sslPort"), "sslPort")
            # one number is one listener: an sslPort equal to the port is kept once (two
            # ServiceEntry ports on one number are invalid: "port already defined")
            if all(e.port != ssl_port for e in endpoints):
                endpoints += (Endpoint("https", ssl_port),)
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
