"""A renewed TLS certificate is picked up without a restart: new connections get it, the
streams already open keep flowing, and a half-written or mismatched pair is refused while
the previous one keeps serving."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import grpc
import pytest

from mcpserver.xds.client import IstiodLikeClient
from mcpserver.xds.typeurls import ISTIO_1_29
from tests.certs import make_certs
from tests.conftest import (
    AppFactory,
    eventually,
    health_status,
    make_settings,
    service,
    write_services,
)

pytestmark = pytest.mark.component


def install(cert: Path, key: Path, live: Path) -> None:
    """Replace the served files as a rotation does: each file atomically, one after the
    other (so a poll may see the new certificate with the old key)."""
    for source, name in ((cert, "server.pem"), (key, "server-key.pem")):
        staged = live / f".{name}.new"
        shutil.copyfile(source, staged)
        staged.replace(live / name)


Stream = tuple[IstiodLikeClient, asyncio.Task[None], grpc.aio.Channel]


async def synced_client(port: int, ca: Path) -> Stream:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    channel = grpc.aio.secure_channel(
        f"127.0.0.1:{port}", credentials, [("grpc.ssl_target_name_override", "localhost")]
    )
    client = IstiodLikeClient(channel, ISTIO_1_29)
    task = asyncio.create_task(client.run())
    await client.wait_for(lambda c: c.synced(), 10)
    return client, task, channel


async def handshake(port: int, ca: Path) -> bool:
    """Whether a new TLS connection trusting `ca` gets through (health Check answers)."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    async with grpc.aio.secure_channel(
        f"127.0.0.1:{port}", credentials, [("grpc.ssl_target_name_override", "localhost")]
    ) as channel:
        try:
            async with asyncio.timeout(5):
                await health_status(channel, "")
        except grpc.aio.AioRpcError as err:
            return err.code() is not grpc.StatusCode.UNAVAILABLE
    return True


async def test_new_certificates_reach_new_connections_and_open_streams_keep_flowing(
    static_file: Path, start_app: AppFactory
) -> None:
    old = make_certs(static_file.parent / "old")
    new = make_certs(static_file.parent / "new")  # another CA: only new handshakes trust it
    live = static_file.parent / "live"
    live.mkdir()
    install(old["server"], old["server-key"], live)
    app = await start_app(
        make_settings(
            static_file,
            server={
                "listen": "127.0.0.1:0",
                "admin": "127.0.0.1:0",
                "tls": {
                    "cert_file": str(live / "server.pem"),
                    "key_file": str(live / "server-key.pem"),
                },
            },
        )
    )
    certificates = app.xds.certificates
    assert certificates is not None and certificates.generation == 1
    first = await synced_client(app.port, old["ca"])

    install(new["server"], new["server-key"], live)
    await eventually(lambda: certificates.generation == 2, 15)
    second = await synced_client(app.port, new["ca"])
    assert not await handshake(app.port, old["ca"])
    # the stream opened under the old certificate is still live: a change reaches it
    write_services(static_file, [service("renewed", "10.4.0.1")])
    for client, _, _ in (first, second):
        await client.wait_for(
            lambda c: [r.name for r in c.latest("ServiceEntry")] == ["renewed"], 10
        )
    assert not first[1].done()
    ok = app.metrics.registry.get_sample_value("mcpserver_tls_reloads_total", {"result": "ok"})
    assert ok == 1

    # a pair that does not match (the old key) is refused, logged, and the new one stays
    shutil.copyfile(old["server-key"], live / "server-key.pem")

    def refused() -> float:
        labels = {"result": "error"}
        return app.metrics.registry.get_sample_value("mcpserver_tls_reloads_total", labels) or 0

    await eventually(lambda: refused() >= 1, 15)
    assert certificates.generation == 2
    assert await handshake(app.port, new["ca"])
    for client, task, channel in (first, second):
        client.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await channel.close()
