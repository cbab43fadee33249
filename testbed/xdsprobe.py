"""A minimal Envoy-style xDS client for istiod's plaintext port: what a sidecar would get.

It asks CDS (wildcard) as a sidecar node, then EDS for one cluster, ACKing like Envoy, so the
tests can check that istiod turned our ServiceEntries into clusters and endpoints.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

from mcpserver.xds.client import ADS_METHOD, Outbox

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def sidecar_node() -> base_pb2.Node:
    metadata = struct_pb2.Struct()
    metadata.update(
        {"NAMESPACE": "default", "CLUSTER_ID": "Kubernetes", "INSTANCE_IPS": "127.0.0.2"}
    )
    return base_pb2.Node(
        id="sidecar~127.0.0.2~verify.default~default.svc.cluster.local", metadata=metadata
    )


async def endpoints(port: int, cluster: str, within: float = 10.0) -> tuple[list[str], list[str]]:
    """(cluster names from CDS, `address:port` of the cluster's endpoints from EDS)."""
    outbox: Outbox[discovery_pb2.DiscoveryRequest] = Outbox()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            ADS_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )(outbox.requests())
        outbox.send(discovery_pb2.DiscoveryRequest(type_url=CDS, node=sidecar_node()))
        names: list[str] = []
        found: list[str] = []
        async with asyncio.timeout(within):
            async for response in call:
                outbox.send(
                    discovery_pb2.DiscoveryRequest(
                        type_url=response.type_url,
                        version_info=response.version_info,
                        response_nonce=response.nonce,
                        resource_names=[cluster] if response.type_url == EDS else [],
                    )
                )
                if response.type_url == CDS:
                    for any_cluster in response.resources:
                        decoded = cluster_pb2.Cluster()
                        any_cluster.Unpack(decoded)
                        names.append(decoded.name)
                    outbox.send(
                        discovery_pb2.DiscoveryRequest(type_url=EDS, resource_names=[cluster])
                    )
                elif response.type_url == EDS:
                    for any_cla in response.resources:
                        cla = endpoint_pb2.ClusterLoadAssignment()
                        any_cla.Unpack(cla)
                        if cla.cluster_name != cluster:
                            continue
                        for locality in cla.endpoints:
                            for lb in locality.lb_endpoints:
                                sock = lb.endpoint.address.socket_address
                                found.append(f"{sock.address}:{sock.port_value}")
                        outbox.close()
                        call.cancel()
                        return names, sorted(found)
    return names, sorted(found)


ADDRESS = "type.googleapis.com/istio.workload.Address"
DELTA_ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"


def ztunnel_node() -> base_pb2.Node:
    """What ztunnel says it is: workload discovery (WDS) is asked for by a ztunnel node."""
    metadata = struct_pb2.Struct()
    metadata.update(
        {"NAMESPACE": "istio-system", "CLUSTER_ID": "Kubernetes", "INSTANCE_IPS": "127.0.0.3"}
    )
    return base_pb2.Node(
        id="ztunnel~127.0.0.3~ztunnel-probe.istio-system~istio-system.svc.cluster.local",
        metadata=metadata,
    )


async def workload_addresses(
    port: int, wanted: Callable[[set[str]], bool], within: float = 30.0
) -> set[str]:
    """The names of the `istio.workload.Address` resources istiod's WDS gives a ztunnel-like
    delta xDS client (ztunnel's wildcard subscription), once `wanted(names)` holds; names are
    `namespace/hostname` for services and a uid for workloads."""
    outbox: Outbox[discovery_pb2.DeltaDiscoveryRequest] = Outbox()

    names: set[str] = set()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_stream(
            DELTA_ADS_METHOD,
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
        )(outbox.requests())
        outbox.send(discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS, node=ztunnel_node()))
        try:
            async with asyncio.timeout(within):
                async for response in call:
                    names |= {r.name for r in response.resources}
                    names -= set(response.removed_resources)
                    outbox.send(
                        discovery_pb2.DeltaDiscoveryRequest(
                            type_url=response.type_url, response_nonce=response.nonce
                        )
                    )
                    if wanted(names):
                        break
        except TimeoutError:
            raise AssertionError(
                f"WDS never gave what was wanted; it gave {sorted(names)}"
            ) from None
        finally:
            outbox.close()
    return names
