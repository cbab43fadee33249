"""Shutdown as a load balancer and istiod see it, with a real server process and SIGTERM:
unready at once (/readyz 503, gRPC health NOT_SERVING), streams still served for the drain,
then ended with UNAVAILABLE, then exit 0 within drain + grace."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from mcpserver.app import App
from mcpserver.registry.base import Registry
from mcpserver.settings import Settings, ShutdownSettings
from mcpserver.xds.client import IstiodLikeClient
from mcpserver.xds.typeurls import ISTIO_1_29
from tests.conftest import eventually, free_port, health_status, make_settings

pytestmark = pytest.mark.component

ADS = "envoy.service.discovery.v3.AggregatedDiscoveryService"
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING
CONFIGURABLE = "shutdown" in Settings.model_fields
DRAIN_DEFAULT = ShutdownSettings().drain  # the defaults, where they are written
GRACE_DEFAULT = ShutdownSettings().grace


def readyz(admin: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0  # not listening


class Server:
    """`mcpserver serve` in its own process, on the static file."""

    def __init__(self, static_file: Path, shutdown: str = "") -> None:
        self.port, self.admin = free_port(), free_port()
        config = static_file.parent / "serve.yaml"
        config.write_text(
            f"server: {{listen: '127.0.0.1:{self.port}', admin: '127.0.0.1:{self.admin}'}}\n"
            f"registries: [{{kind: static, name: files, path: {static_file}}}]\n" + shutdown
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mcpserver", "serve", "--config", str(config)],
            env=os.environ.copy(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    async def ready(self) -> None:
        await eventually(lambda: self.process.poll() is None and readyz(self.admin) == 200, 30)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=10)


async def health(channel: grpc.aio.Channel) -> set[int]:
    return {await health_status(channel, name) for name in ("", ADS)}


@pytest.mark.parametrize(
    ("shutdown", "drain", "grace"),
    [
        ("", DRAIN_DEFAULT, GRACE_DEFAULT),
        pytest.param(
            "shutdown: {drain: 1500ms, grace: 4s}\n",
            1.5,
            4.0,
            marks=pytest.mark.skipif(not CONFIGURABLE, reason="settings has no shutdown yet"),
        ),
    ],
    ids=["default-drain", "configured-drain"],
)
async def test_sigterm_unready_at_once_drains_then_closes_streams_and_exits(
    static_file: Path, shutdown: str, drain: float, grace: float
) -> None:
    server = Server(static_file, shutdown)
    try:
        await server.ready()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            client = IstiodLikeClient(channel, ISTIO_1_29)
            stream = asyncio.create_task(client.run())
            await client.wait_for(lambda c: c.synced(), 10)
            assert await health(channel) == {SERVING}

            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # at once: probes say go away, on HTTP and on gRPC
            await eventually(lambda: readyz(server.admin) == 503, 1.0)

            async def not_serving() -> bool:
                assert await health(channel) == {NOT_SERVING}, "gRPC health still SERVING"
                return True

            await eventually(not_serving, 1.0 - (time.monotonic() - signalled), every=0.02)
            unready = time.monotonic() - signalled
            # during the drain the stream stays open and served
            await asyncio.sleep(0)  # let the loop notice a stream that ended
            assert not stream.done(), "the stream ended before the drain"
            assert readyz(server.admin) == 503  # and the admin port still answers

            # after the drain: the stream ends with UNAVAILABLE, so istiod reconnects
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await asyncio.wait_for(stream, drain + grace)
            closed = time.monotonic() - signalled
        assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
        code = await asyncio.to_thread(server.process.wait, drain + grace)
        exited = time.monotonic() - signalled
        stderr = server.process.communicate()[1]
    finally:
        server.kill()
    assert code == 0, stderr
    assert unready < 1.0
    assert drain - 0.2 <= closed < drain + 2.0, (closed, stderr)
    assert exited < drain + grace, (exited, stderr)
    logged = [line for line in stderr.splitlines() if " mcpserver " in line]
    assert any(f"draining {drain:g}s" in line for line in logged), stderr
    assert any("closed 1 istiod streams with UNAVAILABLE" in line for line in logged), stderr


async def test_a_second_signal_skips_the_drain(static_file: Path) -> None:
    server = Server(static_file)
    try:
        await server.ready()
        server.process.send_signal(signal.SIGTERM)
        await eventually(lambda: readyz(server.admin) == 503, 1.0)
        server.process.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        code = await asyncio.to_thread(server.process.wait, DRAIN_DEFAULT + GRACE_DEFAULT)
        took = time.monotonic() - signalled
    finally:
        server.kill()
    assert code == 0
    assert took < DRAIN_DEFAULT / 2


class Stuck(Registry):
    """A registry whose stop never ends (a client library that hangs on close)."""

    def __init__(self) -> None:
        from mcpserver.metrics import Metrics

        super().__init__("stuck", Metrics())
        self.stopping = asyncio.Event()

    async def open(self) -> None:
        self.publish((), synced=True)

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.Event().wait()  # never set


async def test_grace_bounds_the_steps_after_the_drain_and_every_step_still_runs(
    static_file: Path,
) -> None:
    stuck = Stuck()
    app = App(make_settings(static_file), registries=[stuck])
    await app.start()
    await eventually(lambda: app.store.snapshot is not None)
    began = time.monotonic()
    clean = await app.stop(drain=0.0, grace=0.5)
    took = time.monotonic() - began
    assert clean is False  # said so: the CLI exits 1
    assert stuck.stopping.is_set()
    assert took < 0.5 + 3 * 0.2 + 0.5  # the grace, and a moment for each step after it
    assert readyz(app.admin.port) == 0  # the admin port, the last step, still closed
