"""TLS on the ADS port (istiod >= 1.26 speaks TLS SIMPLE to config sources)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from mcpserver.xds.client import IstiodLikeClient
from mcpserver.xds.typeurls import ISTIO_1_29
from tests.conftest import AppFactory, make_settings

pytestmark = pytest.mark.component


def self_signed(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is needed to make a test certificate")
    cert, key = directory / "server.pem", directory / "server-key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=mcpserver.test",
            "-addext",
            "subjectAltName=DNS:mcpserver.test,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_clients_sync_and_plaintext_is_refused(
    static_file: Path, start_app: AppFactory
) -> None:
    cert, key = self_signed(static_file.parent)
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
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    options = [("grpc.ssl_target_name_override", "mcpserver.test")]
    async with grpc.aio.secure_channel(f"127.0.0.1:{app.port}", credentials, options) as channel:
        client = IstiodLikeClient(channel, ISTIO_1_29)
        task = asyncio.create_task(client.run())
        await client.wait_for(lambda c: c.synced(), 10)
        assert sorted(r.name for r in client.latest("ServiceEntry")) == ["cart", "pay"]
        client.close()
        task.cancel()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as plain:
        with pytest.raises(grpc.aio.AioRpcError):
            await plain.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=3)
