"""TLS on the ADS port (istiod >= 1.26 speaks TLS SIMPLE to config sources)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from mcpserver.xds.client import IstiodLikeClient
from mcpserver.xds.typeurls import ISTIO_1_29
from tests.certs import make_certs
from tests.conftest import AppFactory, health_status, make_settings

pytestmark = pytest.mark.component


async def test_tls_clients_sync_and_plaintext_is_refused(
    static_file: Path, start_app: AppFactory
) -> None:
    certs = make_certs(static_file.parent / "certs")
    cert, key = certs["server"], certs["server-key"]
    app = await start_app(
        make_settings(
            static_file,
            server={
                "listen": "127.0.0.1:0",
                "admin": "127.0.0.1:0",
                "tls": {"cert_file": str(cert), "key_file": str(key)},
            },
        )
    )
    credentials = grpc.ssl_channel_credentials(root_certificates=certs["ca"].read_bytes())
    options = [("grpc.ssl_target_name_override", "localhost")]
    async with grpc.aio.secure_channel(f"127.0.0.1:{app.port}", credentials, options) as channel:
        client = IstiodLikeClient(channel, ISTIO_1_29)
        task = asyncio.create_task(client.run())
        await client.wait_for(lambda c: c.synced(), 10)
        assert sorted(r.name for r in client.latest("ServiceEntry")) == ["cart", "pay"]
        client.close()
        task.cancel()
    # the CLI's dump speaks the same TLS (run in a thread: it has its own event loop)
    from mcpserver.cli import main

    dump = ["dump", "--server", f"127.0.0.1:{app.port}", "-o", "json", "--timeout", "3"]
    tls = ["--ca", str(certs["ca"]), "--server-name", "localhost"]
    assert await asyncio.to_thread(main, [*dump, *tls]) == 0
    assert await asyncio.to_thread(main, dump) == 1  # plaintext against TLS fails cleanly
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as plain:
        with pytest.raises(grpc.aio.AioRpcError):
            await health_status(plain, "")
