"""Hostile or broken clients on the gRPC port: each is contained, and the well-behaved client
beside it keeps receiving on time.

- a client that never reads: its stream holds at most what HTTP/2's flow-control window
  lets through, and is ended after `server.send_timeout`;
- garbage bytes on the port, and oversized requests: refused, the server unharmed;
- 1,000 streams opened and dropped;
- requests for unknown types at a high rate: answered (with nothing) without harm.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from mcpserver.app import App
from mcpserver.model import Instance, Port, Service
from mcpserver.xds.client import IstiodLikeClient
from mcpserver.xds.server import ADS_SERVICE
from mcpserver.xds.typeurls import ISTIO_1_29
from tests.component.test_ads import ControlledRegistry
from tests.conftest import AppFactory, ClientFactory, eventually, settings_for

pytestmark = pytest.mark.component

ADS_METHOD = f"/{ADS_SERVICE}/StreamAggregatedResources"
SERVICE_ENTRY = "networking.istio.io/v1/ServiceEntry"
SERVICES = 3000  # a ServiceEntry response of several MB: well past any flow-control window


def estate(generation: int) -> list[Service]:
    return [
        Service(
            registry="hostile",
            namespace="mesh",
            name=f"svc-{i}",
            hosts=(f"svc-{i}.mesh",),
            ports=(Port("http", 80, "HTTP"),),
            instances=tuple(
                Instance(f"10.{generation}.{i // 250}.{j + 1 + i % 250 // 50}") for j in range(8)
            ),
        )
        for i in range(SERVICES)
    ]


def request(type_url: str, node: str = "hostile") -> discovery_pb2.DiscoveryRequest:
    return discovery_pb2.DiscoveryRequest(type_url=type_url, node=base_pb2.Node(id=node))


async def started(
    tmp_path: Path, start_app: AppFactory, send_timeout: str = "60s"
) -> tuple[ControlledRegistry, App]:
    registry = ControlledRegistry("hostile")
    settings = settings_for(tmp_path, server={
        "listen": "127.0.0.1:0", "admin": "127.0.0.1:0", "send_timeout": send_timeout
    })  # fmt: skip
    app = await start_app(settings, registries=[registry])
    registry.sync(*estate(1))
    return registry, app


async def drain(call: grpc.aio.StreamStreamCall[Any, Any]) -> None:
    async for _ in call:
        pass


def holds(client: IstiodLikeClient, address: str) -> bool:
    """The client's ServiceEntries have an endpoint at `address`."""
    return any(
        e.address == address
        for r in client.latest("ServiceEntry")
        for e in getattr(r.spec, "endpoints", ())
    )


async def test_a_client_that_never_reads_is_dropped_and_the_others_keep_up(
    tmp_path: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    registry, app = await started(tmp_path, start_app, send_timeout="1s")
    port = app.port
    healthy = await connect(port)
    await healthy.wait_for(lambda c: len(c.latest("ServiceEntry")) == SERVICES, 60)

    # a client that asks and then never reads a byte of any answer
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.http2.bdp_probe", 0)])
    call = channel.stream_stream(
        ADS_METHOD,
        request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
        response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
    )()
    for url in ISTIO_1_29:
        await call.write(request(url))
    try:
        # every push is one more response it will not take; the healthy client takes each
        for generation in (2, 3):
            pushed = time.monotonic()
            registry.sync(*estate(generation))
            first = f"10.{generation}.0.1"
            await healthy.wait_for(lambda c, first=first: holds(c, first), 30)
            assert time.monotonic() - pushed < 10, "the healthy client was held up"
        # the stalled stream is ended on the server (only the healthy one is left) ...
        await eventually(lambda: len(app.clients.open) == 1, 30)
        assert app.metrics.send_timeouts.labels("all")._value.get() == 1  # one stream, one timeout
        # ... with a reason the client reads once it reads again: after what was buffered
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(drain(call), 30)
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not read within 1s" in (ended.value.details() or "")
    finally:
        call.cancel()
        await channel.close()
    assert healthy.synced()


async def test_garbage_oversized_many_streams_and_unknown_types_harm_nobody(
    tmp_path: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    registry, app = await started(tmp_path, start_app)
    port = app.port
    healthy = await connect(port)
    await healthy.wait_for(lambda c: len(c.latest("ServiceEntry")) == SERVICES, 60)

    # garbage bytes where an HTTP/2 preface belongs: the connection is closed
    for garbage in (b"\x00" * 64, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)) * 40):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(garbage)
            raw.settimeout(5)
            try:
                while raw.recv(4096):
                    pass
            except (ConnectionResetError, TimeoutError):
                pass

    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        ads = channel.stream_stream(
            ADS_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )
        # an oversized request (beyond the server's 16 MiB limit): refused, stream ended
        huge = discovery_pb2.DiscoveryRequest(
            type_url=SERVICE_ENTRY, resource_names=["x" * 1024] * (17 * 1024)
        )
        call = ads()
        await call.write(huge)
        assert await asyncio.wait_for(call.code(), 30) == grpc.StatusCode.RESOURCE_EXHAUSTED

        # 1,000 streams opened (each asks for something) and dropped
        async def open_and_drop() -> None:
            one = ads()
            await one.write(request(SERVICE_ENTRY))
            one.cancel()

        for _ in range(10):
            await asyncio.gather(*(open_and_drop() for _ in range(100)))

        # unknown types at a high rate on one stream: each answered with nothing, in order
        call = ads()
        for n in range(500):
            await call.write(request(f"type.googleapis.com/unknown.Kind{n % 7}"))
        call.cancel()

    # every one of those streams is gone from the server: only the healthy one is left
    await eventually(lambda: len(app.clients.open) == 1, 30)
    # the healthy client saw all of it go by: a new push still reaches it at once
    pushed = time.monotonic()
    registry.sync(*estate(4))
    await healthy.wait_for(lambda c: holds(c, "10.4.0.1"), 30)
    assert time.monotonic() - pushed < 10
    await eventually(healthy.synced, 10)
