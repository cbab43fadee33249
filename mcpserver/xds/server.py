"""The grpc.aio server istiod dials: ADS, health, reflection, and options istiod needs.

Options matter here: istiod's client pings every 30 s (pkg/keepalive/options.go), and
grpcio's default policy answers frequent pings without data with GOAWAY too_many_pings,
cutting the config stream; responses for 100k instances are large, and istiod accepts up to
MaxInt32 bytes (pkg/adsc/adsc.go).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from envoy.service.discovery.v3 import ads_pb2, discovery_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

# Imported so the Istio messages are in the default descriptor pool, where reflection
# (grpcurl) finds them to decode the Any bodies of our responses.
from mcpserver_protos.istio.mcp.v1alpha1 import resource_pb2
from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2

from mcpserver.xds.sotw import AdsHandler

log = logging.getLogger("mcpserver.xds")

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
REFLECTED_SYMBOLS = (
    resource_pb2.DESCRIPTOR.message_types_by_name["Resource"].full_name,
    service_entry_pb2.DESCRIPTOR.message_types_by_name["ServiceEntry"].full_name,
)


@dataclass(frozen=True)
class ServerOptions:
    listen: str
    max_message_bytes: int
    cert_file: str | None = None
    key_file: str | None = None


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Server options: accept istiod's keepalive pings without data, and large messages."""
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        # istiod pings every 30 s; tests ping every second. Never answer with GOAWAY.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]


async def _delta(
    requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
    context: grpc.aio.ServicerContext[discovery_pb2.DeltaDiscoveryRequest, bytes],
) -> AsyncIterator[bytes]:
    await context.abort(
        grpc.StatusCode.UNIMPLEMENTED,
        "mcpserver serves state-of-the-world ADS (StreamAggregatedResources) only; "
        "istiod's config-source client never uses delta xDS",
    )
    yield b""  # pragma: no cover - abort raises


def _identity(payload: bytes) -> bytes:
    return payload


def ads_service(handler: AdsHandler) -> grpc.GenericRpcHandler:
    """The ADS service with a pass-through serializer: responses are already bytes."""
    return grpc.method_handlers_generic_handler(
        ADS_SERVICE,
        {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                handler.stream,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=_identity,
            ),
            "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
                _delta,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=_identity,
            ),
        },
    )


class XdsServer:
    """Owns the grpc.aio server; `serving()` flips health once the store is primed."""

    def __init__(self, options: ServerOptions, handler: AdsHandler) -> None:
        self._options = options
        self._server = grpc.aio.server(options=channel_options(options.max_message_bytes))
        self._server.add_generic_rpc_handlers((ads_service(handler),))
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        assert ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"]
        reflection.enable_server_reflection(
            (ADS_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        if options.cert_file and options.key_file:
            with open(options.cert_file, "rb") as cert, open(options.key_file, "rb") as key:
                credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
            self.port = self._server.add_secure_port(options.listen, credentials)
        else:
            self.port = self._server.add_insecure_port(options.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {options.listen}")

    async def start(self) -> None:
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(ADS_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        log.info("xds listening address=%s", self._options.listen)

    async def serving(self) -> None:
        """Called when the first snapshot is published."""
        await self._health.set(ADS_SERVICE, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 1.0) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
