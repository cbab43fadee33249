"""Part (f), what content versions save istiod: the CPU time the real istiod spends taking a
push of 10k ServiceEntries where one changed, with our content versions, beside the same
push where every resource's version changed (what a server without versions causes).

istiod (the unmodified pilot-discovery the integration tier runs, tests/integration/istiod.py,
with `configSources: [xds://, k8s://]` on its own etcd and kube-apiserver, as our users deploy
it) dials a proxy in this process, which relays its ADS stream to the in-process mcpserver
unchanged, or, in
the `salted` variant, with every ServiceEntry's metadata.version given a fresh suffix on
each response: istiod's adsc then sees 10k updated resources instead of one
(pkg/adsc/adsc.go handleMCP compares metadata.version). Both variants go through the same
relay, so the relay's own cost is not what differs.

istiod's CPU is utime+stime from /proc/<pid>/stat: read when the relay forwards the push,
and again once istiod has gone quiet (no CPU beyond its idle rate for a whole window), its
idle rate over that span subtracted. Its ACK of the push (sent after handleMCP) is stamped
too.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from mcpserver_protos.istio.mcp.v1alpha1 import resource_pb2

from bench import shardpush
from bench.bare import ADS_SERVICE
from bench.context import Bench
from bench.inprocess import InProcessServer, services
from bench.probe import SERVICE_ENTRY_URL, channel
from bench.process import QUIET_WINDOW, cpu_seconds, quiet
from bench.stats import median
from bench.workload import Estate, address
from mcpserver.xds.client import ADS_METHOD
from testbed.istiod import Istiod
from testbed.kube import ControlPlane


def salt(response: discovery_pb2.DiscoveryResponse, suffix: str) -> bytes:
    """The response with every resource's metadata.version changed."""
    for wrapped in response.resources:
        resource = resource_pb2.Resource.FromString(wrapped.value)
        resource.metadata.version = f"{resource.metadata.version}~{suffix}"
        wrapped.value = resource.SerializeToString()
    return bytes(response.SerializeToString())


@dataclass
class Forward:
    """One ServiceEntry response relayed to istiod."""

    nonce: str
    at: float
    cpu: float
    acked: float | None = None


@dataclass
class VersionRelay:
    """An ADS relay: istiod <-> relay <-> mcpserver; `salted` rewrites versions."""

    upstream: int
    istiod_pid: int = 0
    salted: bool = False
    forwards: list[Forward] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: grpc.aio.Server | None = None
    _salts: itertools.count[int] = field(default_factory=itertools.count)

    async def start(self) -> None:
        handler = grpc.method_handlers_generic_handler(
            ADS_SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._stream, request_deserializer=None, response_serializer=None
                )
            },
        )
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", 1 << 30),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
                ("grpc.http2.max_ping_strikes", 0),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    async def _requests(self, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for raw in requests:
            request = discovery_pb2.DiscoveryRequest.FromString(raw)
            if request.type_url == SERVICE_ENTRY_URL:
                at = time.perf_counter()
                for forward in self.forwards:
                    if forward.nonce == request.response_nonce and forward.acked is None:
                        forward.acked = at
                        self.changed.set()
            yield raw

    async def _stream(
        self, requests: AsyncIterator[bytes], context: object
    ) -> AsyncIterator[bytes]:
        upstream = channel(self.upstream)
        try:
            relay: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = upstream.stream_stream(
                ADS_METHOD, request_serializer=None, response_deserializer=None
            )
            call = relay(self._requests(requests))
            async for received in call:
                response = discovery_pb2.DiscoveryResponse.FromString(received)
                if response.type_url != SERVICE_ENTRY_URL:
                    yield received
                    continue
                sent = salt(response, str(next(self._salts))) if self.salted else received
                cpu = cpu_seconds(self.istiod_pid) if self.istiod_pid else 0.0
                self.forwards.append(Forward(response.nonce, time.perf_counter(), cpu))
                self.changed.set()
                yield sent
        finally:
            await upstream.close()


async def push(
    bench: Bench,
    server: InProcessServer,
    relay: VersionRelay,
    istiod: Istiod,
    moved: list[int],
    idle_rate: float,
    estate: Estate,
) -> dict[str, float]:
    """Publish the estate with `moved` services edited; istiod's CPU for taking it."""
    assert istiod.process is not None
    pid = istiod.process.pid
    mark = len(relay.forwards)
    await server.next_publish(services(estate, 10, moved), bench.config.deadline)
    async with asyncio.timeout(bench.config.deadline):
        while len(relay.forwards) <= mark or relay.forwards[mark].acked is None:
            relay.changed.clear()
            await relay.changed.wait()
    forward = relay.forwards[mark]
    allowance = max(0.02, 2 * idle_rate * QUIET_WINDOW)
    until, cpu = await quiet(pid, allowance, bench.config.deadline)
    assert forward.acked is not None
    return {
        "cpu_seconds": cpu - forward.cpu - idle_rate * (until - forward.at),
        "busy_seconds": until - forward.at,
        "ack_seconds": forward.acked - forward.at,
    }


async def run(bench: Bench) -> dict[str, Any]:
    config = bench.config
    kit = await bench.istiod()
    result = await measure(bench, kit.binary, kit.plane)
    if len(config.istiod_shards) > 1:
        estate = Estate(config.scale, config.instances)
        result["sharded"] = await shardpush.measure(bench, kit.binary, kit.plane, estate, [])
    return result


async def measure(bench: Bench, binary: Path, plane: ControlPlane) -> dict[str, Any]:
    config = bench.config
    estate = Estate(config.scale, config.instances)
    server = InProcessServer(bench.scratch("istiod-mcpserver"), services(estate, 10))
    await server.start()
    relay = VersionRelay(server.port)
    await relay.start()
    workdir = bench.scratch("istiod")
    istiod = Istiod(binary, workdir, relay.port, kubeconfig=plane.istiod_kubeconfig())
    result: dict[str, Any] = {
        "what": "istiod CPU (utime+stime) to take a push of the full set where one "
        "ServiceEntry changed, until istiod is quiet again; idle rate subtracted",
        "baseline": "the same push with every resource's version changed (a server without "
        "content versions), through the same relay",
        "services": estate.services,
        "istiod": str(binary),
    }
    try:
        istiod.start()
        assert istiod.process is not None
        relay.istiod_pid = istiod.process.pid
        await asyncio.to_thread(istiod.wait_ready, config.deadline)
        started, cpu0 = await quiet(istiod.process.pid, 0.05, config.deadline)
        bench.log(f"istiod synced {estate.services} ServiceEntries; startup CPU {cpu0:.1f}s")
        await asyncio.sleep(3)  # the idle rate is a rate over time: measured over 3 s
        idle_rate = (cpu_seconds(istiod.process.pid) - cpu0) / (time.perf_counter() - started)
        result["idle_cpu_rate"] = idle_rate
        result["startup_cpu_seconds"] = cpu0
        moved: list[int] = []
        for variant in ("versions", "salted"):
            relay.salted = variant == "salted"
            pushes = []
            for _ in range(config.istiod_pushes):
                moved.append(len(moved) * 7 % estate.services)
                pushes.append(await push(bench, server, relay, istiod, moved, idle_rate, estate))
            result[variant] = {
                "pushes": pushes,
                "cpu_seconds": median([p["cpu_seconds"] for p in pushes]),
                "busy_seconds": median([p["busy_seconds"] for p in pushes]),
                "ack_seconds": median([p["ack_seconds"] for p in pushes]),
            }
            bench.log(f"istiod push ({variant}): CPU {result[variant]['cpu_seconds']:.3f}s")
        last = moved[-1]
        held = istiod.configs().get(f"bench/svc-{last}")
        addresses = [e["address"] for e in (held or {}).get("spec", {}).get("endpoints", [])]
        result["istiod_holds_last_edit"] = address(last, 0, 13) in addresses
        result["ratio"] = result["salted"]["cpu_seconds"] / max(
            result["versions"]["cpu_seconds"], 1e-3
        )
    finally:
        await asyncio.to_thread(istiod.kill)  # nothing measured at shutdown
        await relay.stop()
        await server.stop()
    return result
