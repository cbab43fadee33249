"""A TLS-terminating TCP proxy on loopback: what puts TLS in front of a test server that
speaks none (r-nacos), the way a load balancer or sidecar does in front of real Nacos.

It offers ALPN h2 (gRPC requires it) and http/1.1, and forwards the plaintext bytes both ways
to the upstream port: HTTP/1.1 to an HTTP port, HTTP/2 (prior knowledge) to a gRPC port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

from testbed.forwarder import pipe


class TlsProxy:
    """127.0.0.1:<port> (TLS) -> 127.0.0.1:<upstream> (plaintext)."""

    def __init__(self, upstream: int, cert: Path, key: Path) -> None:
        self.upstream = upstream
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(str(cert), str(key))
        self._context.set_alpn_protocols(["h2", "http/1.1"])
        self._server: asyncio.Server | None = None
        self.connections = 0
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True
        )
