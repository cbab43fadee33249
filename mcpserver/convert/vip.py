"""Stable virtual IPs for services that need one.

A TCP service sharing a port with others (every Dubbo provider listens on 20880) can only be
told apart by destination address, and since Istio 1.25 istiod's own auto-allocation writes
through the Kubernetes API and never sees resources served over MCP. So we allocate from
`vip.cidr`: an address keeps its service as long as the service exists, a new service gets
the free address nearest after a hash of its name (so a restart usually reproduces the same
table), and no two services share one.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping

from mcpserver.model import Service

_NO_VIP_PROTOCOLS = frozenset(["HTTP", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-WEB", "HTTPS", "TLS"])


def needs_vip(service: Service) -> bool:
    """STATIC services without addresses that have a port istiod can only route by address."""
    return (
        not service.addresses
        and service.resolution == "STATIC"
        and any(p.protocol.upper() not in _NO_VIP_PROTOCOLS for p in service.ports)
    )


def allocate(keys: Iterable[str], previous: Mapping[str, str], cidr: str) -> dict[str, str]:
    """Addresses for `keys`: previous ones kept, new ones hashed then probed; keys that find
    no free address (pool exhausted) are left out."""
    network = ipaddress.ip_network(cidr)
    first = int(network.network_address)
    size = network.num_addresses
    if network.version == 4 and network.prefixlen < 31:  # skip network and broadcast
        first, size = first + 1, size - 2
    wanted = sorted(set(keys))
    result: dict[str, str] = {}
    taken: set[int] = set()
    for key in wanted:
        address = previous.get(key)
        if address is not None and ipaddress.ip_address(address) in network:
            result[key] = address
            taken.add(int(ipaddress.ip_address(address)))
    for key in wanted:
        if key in result or len(taken) >= size:
            continue
        offset = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest()) % size
        for step in range(size):
            candidate = first + (offset + step) % size
            if candidate not in taken:
                taken.add(candidate)
                result[key] = str(ipaddress.ip_address(candidate))
                break
    return result
