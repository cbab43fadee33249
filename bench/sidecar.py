"""A sidecar's view of istiod: what a proxy is told over istiod's plaintext xDS port (15010),
so a part can time a registry write to the moment a proxy's endpoints hold it (issue 23's end
to end: "a registry write to a sidecar's endpoints from the real istiod").

It subscribes as Envoy does (tests/integration/xdsprobe.py is the one-shot version): CDS
wildcard as a sidecar node, then EDS for every EDS cluster CDS named, ACKing each response
with the names it watches. istiod answers EDS state-of-the-world incrementally (a push after an
endpoint change carries only the clusters that changed: pilot/pkg/xds/eds.go), so each
ClusterLoadAssignment replaces its own cluster's endpoints and leaves the others alone, as in
Envoy. No LDS/RDS: istiod recomputes those only on full pushes, which endpoint changes do not
cause (pilot/pkg/serviceregistry/serviceentry/controller.go, pushServiceUpdates: only
instances changed -> no full push).

Every response is stamped as gRPC hands it over; `view` is what the sidecar holds (host ->
addresses), with the same event log as mcpserver's own client's view (bench/probe.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2

from bench.probe import AdsStream, EndpointLog
from testbed.xdsprobe import CDS, EDS, sidecar_node


def host_of(cluster: str) -> str:
    """`outbound|PORT|SUBSET|HOST` -> HOST."""
    return cluster.rsplit("|", 1)[-1]


@dataclass
class Sidecar(AdsStream):
    """One sidecar-like ADS stream to istiod."""

    view: EndpointLog = field(default_factory=EndpointLog)  # host -> addresses, and events
    clusters: int = 0  # EDS clusters watched
    responses: dict[str, int] = field(default_factory=lambda: {CDS: 0, EDS: 0})
    cla_updates: int = 0  # ClusterLoadAssignments received in all
    _by_cluster: dict[str, frozenset[str]] = field(default_factory=dict)
    _watched: list[str] = field(default_factory=list)

    async def _run(self) -> None:
        self.send(discovery_pb2.DiscoveryRequest(type_url=CDS, node=sidecar_node()))
        async for raw in self.call():
            at = time.perf_counter()
            assert isinstance(raw, bytes)
            response = discovery_pb2.DiscoveryResponse.FromString(raw)
            url = response.type_url
            self.responses[url] = self.responses.get(url, 0) + 1
            self.send(
                discovery_pb2.DiscoveryRequest(
                    type_url=url,
                    version_info=response.version_info,
                    response_nonce=response.nonce,
                    resource_names=self._watched if url == EDS else [],
                )
            )
            if url == CDS:
                self._clusters(response)
            elif url == EDS:
                self._assignments(at, response)
            self._arrived(at)

    def _clusters(self, response: discovery_pb2.DiscoveryResponse) -> None:
        """Watch the EDS clusters CDS names (a new request only when the set changes)."""
        names = []
        for wrapped in response.resources:
            cluster = cluster_pb2.Cluster.FromString(wrapped.value)
            if cluster.type == cluster_pb2.Cluster.EDS:
                names.append(cluster.name)
        names.sort()
        if names != self._watched:
            self._watched = names
            self.clusters = len(names)
            self._outbox.send(discovery_pb2.DiscoveryRequest(type_url=EDS, resource_names=names))

    def _assignments(self, at: float, response: discovery_pb2.DiscoveryResponse) -> None:
        for wrapped in response.resources:
            assignment = endpoint_pb2.ClusterLoadAssignment.FromString(wrapped.value)
            addresses = frozenset(
                lb.endpoint.address.socket_address.address
                for locality in assignment.endpoints
                for lb in locality.lb_endpoints
            )
            self.cla_updates += 1
            name = assignment.cluster_name
            if self._by_cluster.get(name) == addresses:
                continue
            self._by_cluster[name] = addresses
            self.view.set(at, host_of(name), addresses)
