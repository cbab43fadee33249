"""What the registries hold right now, read from them directly (never from the churn's own
bookkeeping), and what a client or istiod holds, both as host -> {"address:port"}.

Only the mapping rules that decide hosts and endpoints are restated here: a Dubbo interface
is its lower-cased name and a disabled provider is no endpoint; a Consul service is
`<name>.service.consul` and only instances whose checks all pass are endpoints; a static
service names its host. A host with no endpoint is no ServiceEntry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import yaml
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from mcpserver_protos.istio.mcp.v1alpha1 import resource_pb2
from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2

from bench.probe import Arrival
from testbed.consulagent import ConsulAgent

Endpoints = dict[str, frozenset[str]]  # host -> {"address:port"}
DUBBO_ROOT = "/dubbo"


def dubbo_truth(zk: KazooClient) -> Endpoints:
    """Interface-level Dubbo providers under /dubbo, as ZooKeeper holds them now."""
    found: dict[str, set[str]] = {}
    for interface in zk.get_children(DUBBO_ROOT):
        try:
            children = zk.get_children(f"{DUBBO_ROOT}/{interface}/providers")
        except NoNodeError:  # removed between the two reads
            continue
        for child in children:
            url = urlsplit(unquote(child))
            params = dict(parse_qsl(url.query))
            if params.get("enabled", "true") == "false":
                continue
            found.setdefault(interface.lower(), set()).add(f"{url.hostname}:{url.port}")
    return {host: frozenset(eps) for host, eps in found.items() if eps}


def consul_truth(agent: ConsulAgent) -> Endpoints:
    """Every catalog service's passing instances, as the Consul agent holds them now."""
    found: Endpoints = {}
    for name in json.loads(agent.request("GET", "/v1/catalog/services")):
        if name == "consul":
            continue
        entries = json.loads(agent.request("GET", f"/v1/health/service/{name}"))
        healthy = frozenset(
            f"{e['Service']['Address'] or e['Node']['Address']}:{e['Service']['Port']}"
            for e in entries
            if all(check["Status"] == "passing" for check in e["Checks"])
        )
        if healthy:
            found[f"{name}.service.consul"] = healthy
    return found


def static_truth(path: Path) -> Endpoints:
    """The static file's services, as the file holds them now."""
    found: Endpoints = {}
    for service in yaml.safe_load(path.read_text())["services"]:
        eps = frozenset(
            f"{instance['address']}:{instance.get('ports', {}).get(port['name'], port['number'])}"
            for instance in service["instances"]
            for port in service["ports"]
        )
        if eps:
            found[service["host"]] = eps
    return found


def decode(value: bytes) -> tuple[str, frozenset[str]]:
    """(host, {"address:port"}) of one packed MCP ServiceEntry resource."""
    resource = resource_pb2.Resource.FromString(value)
    entry = service_entry_pb2.ServiceEntry.FromString(resource.body.value)
    return entry.hosts[0], frozenset(
        f"{e.address}:{e.ports.get(p.name, p.number)}" for e in entry.endpoints for p in entry.ports
    )


@dataclass
class ClientView:
    """What one istiod-like client holds, following every ServiceEntry response; only
    resources whose bytes changed since the previous response are decoded (as istiod's
    store compares versions), so 16 clients cost the driver little."""

    endpoints: Endpoints = field(default_factory=dict)
    responses: int = 0
    decoded: int = 0
    _by_value: dict[bytes, tuple[str, frozenset[str]]] = field(default_factory=dict)

    def apply(self, arrival: Arrival) -> None:
        previous, current = self._by_value, {}
        for resource in arrival.response.resources:
            value = resource.value
            entry = previous.get(value)
            if entry is None:
                entry = decode(value)
                self.decoded += 1
            current[value] = entry
        self._by_value = current
        self.endpoints = dict(current.values())
        self.responses += 1


def configz_view(configs: Iterable[Mapping[str, Any]]) -> Endpoints:
    """host -> {"address:port"} of the ServiceEntries in istiod's /debug/configz."""
    found: Endpoints = {}
    for config in configs:
        spec = config["spec"]
        ports = spec.get("ports") or []
        found[spec["hosts"][0]] = frozenset(
            f"{e['address']}:{(e.get('ports') or {}).get(p['name'], p['number'])}"
            for e in spec.get("endpoints") or []
            for p in ports
        )
    return found


def differences(want: Endpoints, got: Endpoints, limit: int = 5) -> list[str]:
    """Readable differences between two views, at most `limit` of them."""
    lines = []
    for host in sorted(want.keys() | got.keys()):
        missing, extra = want.get(host, frozenset()), got.get(host, frozenset())
        if missing != extra:
            lines.append(
                f"{host}: missing {sorted(missing - extra)}, unexpected {sorted(extra - missing)}"
            )
    return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])
