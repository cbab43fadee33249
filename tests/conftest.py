"""Shared fixtures: loopback servers on ephemeral ports, and istiod-faithful clients."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2

from mcpserver.app import App
from mcpserver.settings import Settings, load_settings
from mcpserver.xds.client import IstiodLikeClient, decode_resource
from mcpserver.xds.typeurls import ISTIO_1_29

if TYPE_CHECKING:
    # the test bed is imported by the fixtures that start it, never here: a unit-test
    # session does not load it (tests/component/test_testbed_boundary.py checks)
    from testbed.kube import ControlPlane, Kubectl


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(check: Callable[[], Any], within: float = 10.0, every: float = 0.02) -> Any:
    """Poll a condition until it is truthy or the deadline passes (no blind sleeps), and
    return its value. `check` may be a coroutine function (awaited each time) and may
    assert: its AssertionError counts as "not yet" until the deadline, then is raised as is,
    so that a check can say what it found."""
    deadline = time.monotonic() + within
    while True:
        failed: AssertionError | None = None
        value: Any = None
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except AssertionError as err:
            failed = err
        if failed is None and value:
            return value
        if time.monotonic() > deadline:
            if failed is not None:
                raise failed
            raise AssertionError(f"condition not met within {within}s: {check}; last: {value!r}")
        await asyncio.sleep(every)


async def past_next_rebuild(app: App) -> None:
    """Trigger a rebuild and wait until it (and any burst pending) has run: after this, a
    withdrawal that was going to be sent has been sent."""
    runs = app.debouncer.runs
    app.debouncer.trigger()
    await eventually(lambda: app.debouncer.runs > runs and not app.debouncer.busy)


def registry_errors(app: App, kind: str, registry: str = "zk") -> float:
    """mcpserver_registry_errors_total{registry, kind} as the app counts it."""
    return sum(
        s.value
        for m in app.metrics.registry.collect()
        for s in m.samples
        if s.name == "mcpserver_registry_errors_total"
        and s.labels == {"registry": registry, "kind": kind}
    )


def every_response_holds(client: IstiodLikeClient, host: str, addresses: list[str]) -> None:
    """No ServiceEntry set `client` was ever sent lacked one of `addresses` under `host`:
    nothing was withdrawn, not even for one response."""
    type_url = next(u for u in client.type_urls if u.endswith("/ServiceEntry"))
    for response in client.responses[type_url]:
        served = {
            e.address
            for r in map(decode_resource, response.resources)
            if r.name == host
            for e in r.service_entry.endpoints
        }
        assert set(addresses) <= served, (host, addresses, sorted(served))


def write_services(path: Path, services: list[dict[str, Any]]) -> None:
    """Replace the static file atomically, as an editor would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump({"services": services}))
    tmp.replace(path)


def service(name: str, *addresses: str, namespace: str = "shop", **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "ports": [{"name": "http", "number": 8080, "protocol": "HTTP"}],
        "instances": [{"address": a} for a in addresses],
    }
    entry.update(extra)
    return entry


def make_settings(static_file: Path, **overrides: Any) -> Settings:
    data: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "debounce": {"after": "20ms", "max": "200ms"},
        "registries": [
            {"kind": "static", "name": "files", "path": str(static_file), "poll_interval": "50ms"}
        ],
    }
    data.update(overrides)
    config = static_file.parent / "mcpserver.yaml"
    config.write_text(yaml.safe_dump(data))
    return load_settings(config, {})


def static_entry(path: Path) -> dict[str, Any]:
    """A static registry named after its file, polled every 50 ms."""
    return {"kind": "static", "name": path.stem, "path": str(path), "poll_interval": "50ms"}


def settings_for(directory: Path, *registries: dict[str, Any], **top: Any) -> Settings:
    """Settings for a test server: ephemeral ports, a short debounce, these registries."""
    data: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:0", "admin": "127.0.0.1:0"},
        "debounce": {"after": "50ms", "max": "500ms"},
        "registries": list(registries),
    }
    data.update(top)
    config = directory / "mcpserver.yaml"
    config.write_text(yaml.safe_dump(data))
    return load_settings(config, {})


@pytest.fixture
def static_file(tmp_path: Path) -> Path:
    path = tmp_path / "services.yaml"
    write_services(path, [service("cart", "10.1.0.1", "10.1.0.2"), service("pay", "10.1.0.9")])
    return path


AppFactory = Callable[..., Awaitable[App]]


@pytest.fixture
async def start_app() -> AsyncIterator[AppFactory]:
    apps: list[App] = []

    async def start(settings: Settings, registries: list[Any] | None = None) -> App:
        app = App(settings, registries=registries)
        await app.start()
        apps.append(app)
        return app

    yield start
    for app in reversed(apps):
        await app.stop()


async def health_status(channel: grpc.aio.Channel, service: str) -> int:
    """grpc.health.v1 Check through a plain call (the typed stubs list no methods)."""
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    reply: health_pb2.HealthCheckResponse = await check(
        health_pb2.HealthCheckRequest(service=service)
    )
    return int(reply.status)


ClientFactory = Callable[..., Awaitable[IstiodLikeClient]]


@pytest.fixture
async def connect() -> AsyncIterator[ClientFactory]:
    opened: list[tuple[IstiodLikeClient, asyncio.Task[None], grpc.aio.Channel]] = []

    async def open_client(port: int, type_urls: tuple[str, ...] = ISTIO_1_29) -> IstiodLikeClient:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        client = IstiodLikeClient(channel, type_urls)
        task = asyncio.create_task(client.run())
        opened.append((client, task, channel))
        return client

    yield open_client
    for client, task, channel in opened:
        client.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await channel.close()


async def admin_get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    """GET `path` from the admin server on this loopback port, with the bearer token when
    one is set: (status, body). An error status is an answer too (/readyz is 503 before the
    first snapshot, a wrong token 401). Asynchronous: an in-process server answers on the
    test's own event loop."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(f"http://127.0.0.1:{port}{path}", headers=headers) as reply,
    ):
        return reply.status, await reply.text()


# ----------------------------------------------------------------- shared real components
# Session fixtures that more than one tier uses (integration, resilience): defined once here
# so that a session starts one Kubernetes control plane, not one per directory.


@pytest.fixture(scope="session")
def envoy_bin() -> Path:
    from testbed.builds import envoy_binary

    return envoy_binary()


@pytest.fixture(scope="session")
def pilot_discovery_bin() -> Path:
    from testbed.builds import pilot_discovery_binary

    return pilot_discovery_binary()


@pytest.fixture(scope="session")
def control_plane(
    tmp_path_factory: pytest.TempPathFactory, pilot_discovery_bin: Path
) -> Iterator[ControlPlane]:
    """One etcd + kube-apiserver for the whole session: tests keep to their own names and
    namespaces and delete what they apply (without kube-controller-manager a namespace is
    never finalised). pilot_discovery_bin comes first: its build fetches the istio module
    whose CRDs are installed here."""
    from testbed.builds import istio_module_dir, kube_binaries
    from testbed.kube import ControlPlane

    plane = ControlPlane(kube_binaries(), tmp_path_factory.mktemp("kube"))
    crds = istio_module_dir() / "manifests" / "charts" / "base" / "files" / "crd-all.gen.yaml"
    try:
        plane.start(crds)
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    return control_plane.kubectl()
