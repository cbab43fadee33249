"""The grpc.aio server istiod dials: ADS, health, reflection, and options istiod needs.

Options matter here: istiod's client pings every 30 s (pkg/keepalive/options.go), and
grpcio's default policy answers frequent pings without data with GOAWAY too_many_pings,
cutting the config stream; responses for 100k instances are large, and istiod accepts up to
MaxInt32 bytes (pkg/adsc/adsc.go).

TLS certificates are short-lived where cert-manager or a mesh CA issues them, and restarting
to pick up a renewed one would cut every istiod stream. So the certificate and key files are
polled and re-read when they change; gRPC's dynamic server credentials hand the new pair to
the next handshake, and connections already open keep theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc
from envoy.service.discovery.v3 import ads_pb2, discovery_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

# Imported so the Istio messages are in the default descriptor pool, where reflection
# (grpcurl) finds them to decode the Any bodies of our responses.
from mcpserver_protos.istio.mcp.v1alpha1 import resource_pb2
from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2

from mcpserver.metrics import Metrics
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
    cert_poll_interval: float = 2.0  # seconds between checks of the TLS files


class TLSError(Exception):
    """The configured certificate and key cannot be used at start."""


FileStamp = tuple[tuple[int, int, int], tuple[int, int, int]]


def _stamp(cert_file: str, key_file: str) -> FileStamp:
    """What changes when either file is replaced or rewritten (a Kubernetes secret volume
    swaps a symlink, which stat follows)."""
    c, k = os.stat(cert_file), os.stat(key_file)
    return (c.st_ino, c.st_mtime_ns, c.st_size), (k.st_ino, k.st_mtime_ns, k.st_size)


class CertificateFiles:
    """The server's certificate and key, re-read when the files change.

    A pair is only taken if the key matches the certificate (Python's ssl loads it) and both
    files were unchanged while read: a rotation that writes one file, then the other, is seen
    half-done at most once, refused, and taken at the next poll. A refused pair keeps the
    previous one serving and is logged once. One instance serves every port (each shard's
    gRPC server has credentials of its own, all fed from here).
    """

    def __init__(self, cert_file: str, key_file: str, metrics: Metrics | None = None) -> None:
        self.cert_file, self.key_file = cert_file, key_file
        self._metrics = metrics
        self._lock = threading.Lock()  # fetchers run on gRPC core threads
        self._refused: FileStamp | None = None
        self.generation = 0  # pairs loaded; the first is generation 1
        try:
            stamp, config = self._load()
        except (OSError, ssl.SSLError) as err:
            raise TLSError(f"server.tls: cannot use {cert_file} and {key_file}: {err}") from None
        self._stamp = stamp
        self._current = config
        self.generation = 1

    def _load(self) -> tuple[FileStamp, grpc.ServerCertificateConfiguration]:
        before = _stamp(self.cert_file, self.key_file)
        with open(self.cert_file, "rb") as cert, open(self.key_file, "rb") as key:
            cert_pem, key_pem = cert.read(), key.read()
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert_file, self.key_file)
        if _stamp(self.cert_file, self.key_file) != before:
            raise OSError("the files changed while being read")
        return before, grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)])

    def check(self) -> bool:
        """Re-read the files if they changed; True when a new pair was taken. Blocking
        (stat and read): call it from a worker thread."""
        seen: FileStamp | None = None
        try:
            seen = _stamp(self.cert_file, self.key_file)
            if seen in (self._stamp, self._refused):
                return False
            stamp, config = self._load()
        except (OSError, ssl.SSLError) as err:
            if seen is None or seen != self._refused:
                self._refused = seen
                log.warning(
                    "TLS certificate not reloaded, the previous one stays in use: cert=%s "
                    "key=%s: %s",
                    self.cert_file,
                    self.key_file,
                    err,
                )
                if self._metrics is not None:
                    self._metrics.tls_reloads.labels("error").inc()
            return False
        with self._lock:
            self._stamp, self._refused, self._current = stamp, None, config
            self.generation += 1
        log.info(
            "TLS certificate reloaded cert=%s key=%s; new connections use it, open streams "
            "keep theirs",
            self.cert_file,
            self.key_file,
        )
        if self._metrics is not None:
            self._metrics.tls_reloads.labels("ok").inc()
        return True

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials for one gRPC server. gRPC calls the fetcher before each handshake:
        it hands over a pair newer than the one this server has once, then None (keep
        using it)."""
        with self._lock:
            given, initial = self.generation, self._current

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal given
            with self._lock:
                if given == self.generation:
                    return None
                given = self.generation
                return self._current

        # types-grpcio says the fetcher must return a configuration; gRPC documents None as
        # "keep the current one", which is what every handshake without a change needs
        fetcher: Callable[[], grpc.ServerCertificateConfiguration] = fetch  # type: ignore[assignment]  # see above
        return grpc.dynamic_ssl_server_credentials(initial, fetcher)

    async def watch(self, interval: float) -> None:
        """Poll the files until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.check)
            except Exception:  # never let a surprise stop the reloads
                log.exception("checking the TLS files failed")


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
    # refused in answer to the client's first request, not before it: a client whose write
    # of that request races the refusal sees gRPC core's INTERNAL ("Failed execute_batch")
    # in place of the status below (grpc.aio's client, seen in a CI run)
    async for _ in requests:
        break
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
    """Owns the grpc.aio servers and their health: NOT_SERVING until `serving()` (the store
    is primed), whenever `not_serving()` says so, and for good from shutdown on.

    One gRPC server per port: the whole set on `options.listen`, and each shard (`shards`:
    listen address and handler, in layout and shard order) on its own, because a stream
    cannot tell which local port it came in on and each port serves a different set. They
    share health, TLS certificates and options; each is a complete server for istiod.
    """

    def __init__(
        self,
        options: ServerOptions,
        handler: AdsHandler,
        metrics: Metrics | None = None,
        shards: Sequence[tuple[str, AdsHandler]] = (),
    ) -> None:
        self._options = options
        self._handlers = [handler, *(served_by for _, served_by in shards)]
        self.certificates: CertificateFiles | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._health = health.aio.HealthServicer()
        if options.cert_file and options.key_file:
            self.certificates = CertificateFiles(options.cert_file, options.key_file, metrics)
        self._servers: list[grpc.aio.Server] = []
        self.ports: list[int] = []
        """The bound ports: the whole set's first, then each shard's in `shards` order."""
        for listen, served_by in ((options.listen, handler), *shards):
            self.ports.append(self._add(listen, served_by))
        self.port = self.ports[0]

    def _add(self, listen: str, handler: AdsHandler) -> int:
        server = grpc.aio.server(options=channel_options(self._options.max_message_bytes))
        self._servers.append(server)
        server.add_generic_rpc_handlers((ads_service(handler),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        assert ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"]
        reflection.enable_server_reflection(
            (ADS_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        if self.certificates is not None:
            port = server.add_secure_port(listen, self.certificates.credentials())
        else:
            port = server.add_insecure_port(listen)
        if port == 0:
            raise OSError(f"cannot listen on {listen}")
        return port

    async def start(self) -> None:
        # NOT_SERVING until the first snapshot: until then every stream waits and answers
        # nothing, so a load balancer or orchestrator must not count us ready yet. The overall
        # service "" follows ADS because ADS is all this server is for.
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        for server in self._servers:
            await server.start()
        if self.certificates is not None:
            self._watcher = asyncio.create_task(
                self.certificates.watch(self._options.cert_poll_interval), name="tls-files"
            )
        if len(self.ports) == 1:
            log.info("xds listening address=%s", self._options.listen)
        else:
            log.info(
                "xds listening address=%s shard_ports=%s",
                self._options.listen,
                ",".join(map(str, self.ports[1:])),
            )

    async def serving(self) -> None:
        """The store holds a current snapshot (first publish, or recovery): "" and ADS report
        SERVING. Ignored once shutdown has begun (`not_serving(final=True)` or `stop()`)."""
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def not_serving(self, *, final: bool = False) -> None:
        """The overall service "" and ADS report NOT_SERVING, until the next `serving()`.

        With `final=True` (the start of shutdown) it lasts: later `serving()` calls are
        ignored, so a rebuild that completes while registries stop cannot make a server that
        is going away look healthy, and health checkers steer new clients away while open
        streams still drain.
        """
        if final:
            # Sets every known service NOT_SERVING and makes later set() calls no-ops.
            await self._health.enter_graceful_shutdown()
        else:
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

    async def stop(self, grace: float = 1.0) -> None:
        """Health NOT_SERVING for good, no new RPCs, `grace` seconds for calls in flight,
        then every ADS stream still open ends with UNAVAILABLE (istiod reconnects, to
        another replica if the address has one)."""
        await self.not_serving(final=True)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        # ended by us, with a status that says why, rather than cancelled by gRPC's stop
        for handler in self._handlers:
            handler.end_streams("server shutting down; reconnect (to another replica)")
        await asyncio.gather(*(server.stop(grace) for server in self._servers))

    async def _set_health(self, status: int) -> None:  # ServingStatus; typed int by the stubs
        for service in ("", ADS_SERVICE):
            await self._health.set(service, status)
