"""The estate every benchmark part serves: N services x M instances, as a static file and as a
ZooKeeper tree of Dubbo providers.

One definition, so that a part's figure and its baseline read the very same records: the
static file the server polls is the file the YAML baseline parses, and the tree the server
watches is the tree the kazoo baseline walks. Addresses are unique and never reused (estate
instances in 10/8, churn additions in 11/8, fan-out's second set in 12/8), which is what lets
a client-side check say "this write is held" without ambiguity.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

DUBBO_ROOT = "/dubbo"
"""Prefix of the per-scale roots (zk_root)."""
ZK_NAMESPACE = "dubbo"
STATIC_NAMESPACE = "bench"
DUBBO_PORT = 20880
STATIC_PORT = 8080


@dataclass(frozen=True, slots=True)
class Estate:
    """`services` services with `instances` instances each."""

    services: int
    instances: int = 10

    @property
    def endpoints(self) -> int:
        return self.services * self.instances


def address(service: int, instance: int, first_octet: int = 10) -> str:
    """Instance `instance` of service `service`: unique up to 64k services x 255 instances."""
    return f"{first_octet}.{service // 256 % 256}.{service % 256}.{instance + 1}"


def fresh_address(counter: int) -> str:
    """The counter-th address no estate uses (11/8), .1 to .250 in the last octet."""
    block, last = divmod(counter, 250)
    return f"11.{block // 256 % 256}.{block % 256}.{last + 1}"


def interface(service: int) -> str:
    """The Dubbo interface of service `service`."""
    return f"com.example.bench.Service{service}"


def zk_host(service: int) -> str:
    """The host mcpserver's default `{interface}` template renders (lower-cased)."""
    return interface(service).lower()


def static_name(service: int) -> str:
    return f"svc-{service}"


def static_host(service: int) -> str:
    """The host the default static host_template renders."""
    return f"{static_name(service)}.{STATIC_NAMESPACE}.svc.mesh"


def zk_root(services: int) -> str:
    """Each scale gets a Dubbo root of its own in the one ZooKeeper, so that parts can run
    in any order and each server watches exactly its estate."""
    return f"{DUBBO_ROOT}{services}"


def providers_path(root: str, service: int) -> str:
    return f"{root}/{interface(service)}/providers"


def provider_url(service: int, host: str) -> str:
    """A provider URL shaped like what Dubbo 3.2 registers (parameters abridged). Each
    provider is a process of its own, so its pid and start timestamp are its own, as in a
    real estate (derived from the name, so that a writer can name the node again to delete
    it): a server that parsed one provider per interface and copied it would be measured
    on an estate that flatters it."""
    iface = interface(service)
    own = zlib.crc32(f"{service}/{host}".encode())
    return (
        f"dubbo://{host}:{DUBBO_PORT}/{iface}?anyhost=true&application=bench-app-{service % 500}"
        f"&deprecated=false&dubbo=2.0.2&dynamic=true&generic=false&interface={iface}"
        f"&methods=get,list,put,remove&pid={1000 + own % 64000}&release=3.2.10"
        f"&service-name-mapping=true&side=provider&timestamp={1700000000000 + own % 86400000}"
        "&version=1.0.0"
    )


def provider_node(root: str, service: int, host: str) -> str:
    """The znode of one provider: its URL, URL-encoded, under the interface's providers."""
    return f"{providers_path(root, service)}/{quote(provider_url(service, host), safe='')}"


def static_entry(service: int, instances: int, first_octet: int = 10) -> str:
    """One service of the static file, as YAML text (block list of flow mappings)."""
    lines = [
        f"- name: {static_name(service)}",
        f"  namespace: {STATIC_NAMESPACE}",
        f"  ports: [{{name: http, number: {STATIC_PORT}, protocol: HTTP}}]",
        "  instances:",
    ]
    for j in range(instances):
        ip = address(service, j, first_octet)
        lines.append(f"  - {{address: {ip}, labels: {{version: v1, zone: z{j % 3}}}}}")
    return "\n".join(lines)


def write_static(path: Path, estate: Estate) -> None:
    """Write the estate as a static registry file, atomically (as an editor replaces it)."""
    text = "\n".join(
        ["services:", *(static_entry(i, estate.instances) for i in range(estate.services))]
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)


def write_static_json(path: Path, estate: Estate) -> None:
    """The same estate as a JSON static file (JSON is YAML's subset; the server reads a file
    that starts with `{` with the json module)."""
    data = {
        "services": [
            {
                "name": static_name(i),
                "namespace": STATIC_NAMESPACE,
                "ports": [{"name": "http", "number": STATIC_PORT, "protocol": "HTTP"}],
                "instances": [
                    {"address": address(i, j), "labels": {"version": "v1", "zone": f"z{j % 3}"}}
                    for j in range(estate.instances)
                ],
            }
            for i in range(estate.services)
        ]
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def zk_endpoints(estate: Estate) -> dict[str, frozenset[str]]:
    """host -> addresses of the ZooKeeper estate as first written."""
    return {
        zk_host(i): frozenset(address(i, j) for j in range(estate.instances))
        for i in range(estate.services)
    }
