"""An ADS client that behaves exactly like istiod's config-source client (pkg/adsc).

Used by `mcpserver dump` and by the tests. Like adsc.Run/Send/ack it sends the whole initial
set of type URLs back to back before reading, puts the node only on the first request, sets a
Go-style timestamp as response_nonce on every initial request, and ACKs every response except
MeshConfig with the response's version and nonce.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format, struct_pb2
from mcpserver_protos.istio.mcp.v1alpha1 import resource_pb2
from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2, workload_entry_pb2

from mcpserver.xds.typeurls import MESH_CONFIG, RESOURCE_TYPE, served_kind

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
BODIES = {
    "type.googleapis.com/istio.networking.v1alpha3.ServiceEntry": service_entry_pb2.ServiceEntry,
    "type.googleapis.com/istio.networking.v1alpha3.WorkloadEntry": workload_entry_pb2.WorkloadEntry,
}


RequestT = TypeVar("RequestT")


class Outbox(Generic[RequestT]):
    """The requests of one bidirectional stream, in the order sent: `send` queues one,
    `close` ends the request side, and the outbox is the request iterator a gRPC
    stream_stream call takes (an ADS client writes ACKs while it reads responses)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[RequestT | None] = asyncio.Queue()

    def send(self, request: RequestT) -> None:
        self._queue.put_nowait(request)

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def requests(self) -> AsyncIterator[RequestT]:
        while (request := await self._queue.get()) is not None:
            yield request


def go_timestamp() -> str:
    """A nonce like Go's time.Now().String(), as adsc.Send sets on every request."""
    now = dt.datetime.now().astimezone()
    return now.strftime("%Y-%m-%d %H:%M:%S.%f %z %Z") + " m=+0.010000001"


def istiod_node(namespace: str = "istio-system") -> base_pb2.Node:
    """The node adsc builds for a config source (adsc.go buildNode; configcontroller.go)."""
    metadata = struct_pb2.Struct()
    metadata.update({"GENERATOR": "api", "ISTIO_VERSION": "65536.65536.65536"})
    return base_pb2.Node(
        id=f"sidecar~~test-1.{namespace}~{namespace}.svc.cluster.local", metadata=metadata
    )


def dump_node() -> base_pb2.Node:
    """How `mcpserver dump` introduces itself: as what it is, so /debug/clients does not
    show it as one more istiod."""
    return base_pb2.Node(id="mcpserver-dump")


def initial_request(
    type_url: str, first: bool, node: base_pb2.Node | None = None
) -> discovery_pb2.DiscoveryRequest:
    request = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=go_timestamp())
    if first:
        request.node.CopyFrom(node or istiod_node())
    return request


def ack(
    response: discovery_pb2.DiscoveryResponse, node: base_pb2.Node | None = None
) -> discovery_pb2.DiscoveryRequest:
    """adsc.ack: version and nonce echoed, full node, no error_detail."""
    return discovery_pb2.DiscoveryRequest(
        type_url=response.type_url,
        version_info=response.version_info,
        response_nonce=response.nonce,
        node=node or istiod_node(),
    )


@dataclass(frozen=True)
class DecodedResource:
    kind: str
    namespace: str
    name: str
    version: str
    create_time: dt.datetime
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: service_entry_pb2.ServiceEntry | workload_entry_pb2.WorkloadEntry

    @property
    def service_entry(self) -> service_entry_pb2.ServiceEntry:
        """The spec, for a resource known to be a ServiceEntry."""
        if not isinstance(self.spec, service_entry_pb2.ServiceEntry):
            raise TypeError(f"{self.namespace}/{self.name} is a {self.kind}, not a ServiceEntry")
        return self.spec

    @property
    def workload_entry(self) -> workload_entry_pb2.WorkloadEntry:
        """The spec, for a resource known to be a WorkloadEntry."""
        if not isinstance(self.spec, workload_entry_pb2.WorkloadEntry):
            raise TypeError(f"{self.namespace}/{self.name} is a {self.kind}, not a WorkloadEntry")
        return self.spec

    def to_dict(self) -> dict[str, object]:
        """The Kubernetes-style object a user would recognise (what istiod stores)."""
        return {
            "apiVersion": "networking.istio.io/v1",
            "kind": self.kind,
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": self.version,
                "creationTimestamp": self.create_time.isoformat().replace("+00:00", "Z"),
                **({"labels": self.labels} if self.labels else {}),
                **({"annotations": self.annotations} if self.annotations else {}),
            },
            "spec": json.loads(json_format.MessageToJson(self.spec, sort_keys=True)),
        }


def decode_resource(any_resource: object) -> DecodedResource:
    """Unpack like adsc.handleMCP + mcpToPilot; raises ValueError where istiod would skip."""
    from google.protobuf import any_pb2

    assert isinstance(any_resource, any_pb2.Any)
    if any_resource.type_url.rsplit("/", 1)[-1] != RESOURCE_TYPE.rsplit("/", 1)[-1]:
        raise ValueError(f"outer Any is {any_resource.type_url}, not istio.mcp.v1alpha1.Resource")
    resource = resource_pb2.Resource()
    any_resource.Unpack(resource)
    parts = resource.metadata.name.split("/")
    if len(parts) != 2:
        raise ValueError(f"invalid name {resource.metadata.name}")
    body_type = BODIES.get(resource.body.type_url)
    if body_type is None:
        raise ValueError(f"unknown body type {resource.body.type_url}")
    spec = body_type()
    resource.body.Unpack(spec)
    return DecodedResource(
        kind=resource.body.type_url.rsplit(".", 1)[-1],
        namespace=parts[0],
        name=parts[1],
        version=resource.metadata.version,
        create_time=resource.metadata.create_time.ToDatetime(tzinfo=dt.UTC),
        labels=dict(resource.metadata.labels),
        annotations=dict(resource.metadata.annotations),
        spec=spec,
    )


@dataclass
class IstiodLikeClient:
    """One ADS stream opened like istiod opens it; collects responses per type URL."""

    channel: grpc.aio.Channel
    type_urls: tuple[str, ...]
    responses: dict[str, list[discovery_pb2.DiscoveryResponse]] = field(default_factory=dict)
    acks_sent: int = 0
    _outbox: Outbox[discovery_pb2.DiscoveryRequest] = field(default_factory=Outbox)
    _call: (
        grpc.aio.StreamStreamCall[discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse]
        | None
    ) = None
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    node: base_pb2.Node | None = None
    """The node it sends (istiod's, unless given)."""
    metadata: dict[str, str] = field(default_factory=dict)
    """The stream's initial metadata (mcpserver says which shard it serves and where the
    others are)."""

    async def run(self) -> None:
        """Send the initial burst, then read and ACK until the stream ends."""
        for i, type_url in enumerate(self.type_urls):
            self._outbox.send(initial_request(type_url, first=i == 0, node=self.node))
        stream = self.channel.stream_stream(
            ADS_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )
        call = stream(self._outbox.requests())
        self._call = call
        self.metadata = {
            key: value if isinstance(value, str) else value.decode()
            for key, value in (await call.initial_metadata() or ())
        }
        async for response in call:
            async with self._changed:
                self.responses.setdefault(response.type_url, []).append(response)
                self._changed.notify_all()
            if response.type_url != MESH_CONFIG:  # adsc does not ACK MeshConfig
                self._outbox.send(ack(response, self.node))
                self.acks_sent += 1

    def close(self) -> None:
        self._outbox.close()
        if self._call is not None:
            self._call.cancel()

    def send(self, request: discovery_pb2.DiscoveryRequest) -> None:
        """Send an arbitrary request on the stream (tests of protocol edge cases)."""
        self._outbox.send(request)

    async def wait_for(self, predicate: object, within: float) -> None:
        """Wait until predicate(self) is true, or raise TimeoutError."""
        assert callable(predicate)
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    def synced(self) -> bool:
        """istiod's HasSynced: every non-MeshConfig type has had a response."""
        return all(t in self.responses for t in self.type_urls if t != MESH_CONFIG)

    def latest(self, kind: str) -> list[DecodedResource]:
        """Resources of the newest response for the type URL serving `kind`."""
        for type_url in self.type_urls:
            if served_kind(type_url) == kind and self.responses.get(type_url):
                return [decode_resource(r) for r in self.responses[type_url][-1].resources]
        return []
