"""The measuring end of every part: an ADS client that opens its stream exactly as istiod's
config-source client does, and a view of what it holds (host -> endpoint addresses).

Why not mcpserver's own IstiodLikeClient: that one keeps every response decoded, which at 10k
services costs the measuring process more than the server it measures. This probe speaks the
same protocol (the same initial burst, node and ACKs, from mcpserver.xds.client) but keeps
only the newest raw response per type and stamps its arrival the moment gRPC hands it over;
the view is updated incrementally, decoding only resources whose bytes changed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from mcpserver_protos.istio.mcp.v1alpha1 import resource_pb2
from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2

from mcpserver.xds.client import ADS_METHOD, Outbox, ack, initial_request
from mcpserver.xds.typeurls import ISTIO_1_29, MESH_CONFIG

SERVICE_ENTRY_URL = "networking.istio.io/v1/ServiceEntry"
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", 1 << 30),
    # the server may not listen yet: retry fast instead of gRPC's default 1 s backoff
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 100),
]


def channel(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)


@dataclass(slots=True)
class Arrival:
    """One ServiceEntry response as it arrived."""

    at: float  # time.perf_counter() when gRPC handed it over
    raw: bytes
    response: discovery_pb2.DiscoveryResponse


Listener = Callable[[Arrival], None]


@dataclass
class AdsStream:
    """One ADS stream's plumbing, shared by the probe (mcpserver's side) and the sidecar
    (istiod's side, bench/sidecar.py): the request queue, the call's task and channel, and
    waiting for a condition on what arrived. A subclass reads the responses in `_run` and
    calls `_arrived(at)` once it has applied each."""

    port: int
    arrived_at: float = 0.0  # time.perf_counter() when the last response was handed over
    _checks: list[Callable[[], None]] = field(default_factory=list)
    _outbox: Outbox[discovery_pb2.DiscoveryRequest] = field(default_factory=Outbox)
    _task: asyncio.Task[None] | None = None
    _channel: grpc.aio.Channel | None = None

    def start(self) -> None:
        self._channel = channel(self.port)
        name = f"{type(self).__name__.lower()}-{self.port}"
        self._task = asyncio.create_task(self._run(), name=name)

    async def stop(self) -> None:
        self._outbox.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close()

    def send(self, request: discovery_pb2.DiscoveryRequest) -> None:
        self._outbox.send(request)

    def call(self) -> grpc.aio.StreamStreamCall[discovery_pb2.DiscoveryRequest, bytes]:
        """The stream, its responses as raw bytes (stamped before any parsing)."""
        assert self._channel is not None
        stream: grpc.aio.StreamStreamMultiCallable[discovery_pb2.DiscoveryRequest, bytes]
        stream = self._channel.stream_stream(
            ADS_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=None,
        )
        return stream(self._outbox.requests(), wait_for_ready=True)

    async def _run(self) -> None:
        raise NotImplementedError

    def _arrived(self, at: float) -> None:
        self.arrived_at = at
        for check in tuple(self._checks):
            check()

    async def until(self, predicate: Callable[[], bool], within: float) -> float:
        """Wait until predicate() holds; return the arrival time of the response after which
        it first held (checked right after that response was applied, in the same step, so
        a later response cannot be mistaken for it). TimeoutError past `within`; an error
        at once if the stream ends."""
        if predicate() and self.arrived_at:
            return self.arrived_at
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

        def check() -> None:
            if not done.done() and predicate():
                done.set_result(self.arrived_at)

        def ended(task: asyncio.Task[None]) -> None:
            if not done.done():
                done.set_exception(RuntimeError(f"the stream to port {self.port} ended: {task}"))

        assert self._task is not None
        self._checks.append(check)
        self._task.add_done_callback(ended)
        try:
            async with asyncio.timeout(within):
                return await done
        finally:
            self._checks.remove(check)
            self._task.remove_done_callback(ended)

    def failed(self) -> BaseException | None:
        """The stream's error, if it ended with one."""
        if self._task is None or not self._task.done() or self._task.cancelled():
            return None
        return self._task.exception()


@dataclass
class Probe(AdsStream):
    """One istiod-like ADS stream; `listeners` run on every ServiceEntry response."""

    type_urls: tuple[str, ...] = ISTIO_1_29
    latest: Arrival | None = None
    responses: int = 0
    listeners: list[Listener] = field(default_factory=list)

    async def _run(self) -> None:
        for i, type_url in enumerate(self.type_urls):
            self.send(initial_request(type_url, first=i == 0))
        async for raw in self.call():
            at = time.perf_counter()
            assert isinstance(raw, bytes)
            response = discovery_pb2.DiscoveryResponse.FromString(raw)
            if response.type_url != MESH_CONFIG:  # adsc does not ACK MeshConfig
                self.send(ack(response))
            if response.type_url != SERVICE_ENTRY_URL:
                continue
            arrival = Arrival(at, raw, response)
            self.latest = arrival
            self.responses += 1
            for listener in tuple(self.listeners):
                listener(arrival)
            self._arrived(at)


def decode_entry(value: bytes) -> tuple[str, frozenset[str]]:
    """(first host, endpoint addresses) of one packed MCP resource (the Any's value)."""
    resource = resource_pb2.Resource.FromString(value)
    entry = service_entry_pb2.ServiceEntry.FromString(resource.body.value)
    return entry.hosts[0], frozenset(e.address for e in entry.endpoints)


@dataclass
class EndpointLog:
    """host -> endpoint addresses as a client last learnt them. While `events` is a list,
    every address that appears or disappears is logged there with the arrival time of the
    response that showed it: (time, host, address, +1 or -1)."""

    endpoints: dict[str, frozenset[str]] = field(default_factory=dict)
    events: list[tuple[float, str, str, int]] | None = None

    def set(self, at: float, host: str, addresses: frozenset[str]) -> None:
        old = self.endpoints.get(host, frozenset())
        if addresses:
            self.endpoints[host] = addresses
        else:
            self.endpoints.pop(host, None)
        if self.events is not None and old != addresses:
            self.events.extend((at, host, a, 1) for a in addresses - old)
            self.events.extend((at, host, a, -1) for a in old - addresses)

    def count(self) -> int:
        return sum(len(a) for a in self.endpoints.values())


@dataclass
class EndpointView(EndpointLog):
    """The endpoints of the newest ServiceEntry set a probe holds.

    Applied to every response; only resources whose bytes differ from the previous
    response's are decoded, so following a 10k set costs a hash per resource."""

    _hosts_by_value: dict[bytes, str] = field(default_factory=dict)

    def apply(self, arrival: Arrival) -> None:
        previous = self._hosts_by_value
        current: dict[bytes, str] = {}
        seen: set[str] = set()
        for resource in arrival.response.resources:
            value = resource.value
            host = previous.get(value)
            if host is None:
                host, addresses = decode_entry(value)
                self.set(arrival.at, host, addresses)
            current[value] = host
            seen.add(host)
        for host in [h for h in self.endpoints if h not in seen]:
            self.set(arrival.at, host, frozenset())
        self._hosts_by_value = current
