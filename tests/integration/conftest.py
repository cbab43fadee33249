"""Fixtures for the integration tier: a real Kubernetes control plane, the unmodified
pilot-discovery against it, and Envoy, built once and cached."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from mcpserver.app import App
from mcpserver.settings import Settings
from mcpserver.xds.client import DecodedResource, IstiodLikeClient
from testbed.builds import consul_binary
from testbed.consulagent import ConsulAgent, Health
from testbed.istiod import Istiod
from testbed.kube import ControlPlane
from testbed.zookeeper import ZooKeeper
from tests.conftest import AppFactory, ClientFactory

STARTED_ISTIODS = pytest.StashKey[list[Istiod]]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test that ran istiod or the control plane names their logs (they stay in
    pytest's temporary directory) and shows the end of each."""
    report = yield
    if not report.failed or call.when != "call":
        return report
    logs: list[Path] = [i.log_path for i in item.stash.get(STARTED_ISTIODS, [])]
    plane = getattr(item, "funcargs", {}).get("control_plane")
    if isinstance(plane, ControlPlane) and plane.apiserver is not None:
        logs += [plane.apiserver.log_path, plane.apiserver.audit_path]
    for log in logs:
        text = log.read_text(errors="replace")[-3000:] if log.exists() else "(missing)"
        report.sections.append((f"log {log}", text))
    return report


IstiodFactory = Callable[..., Coroutine[Any, Any, Istiod]]


@pytest.fixture
async def start_istiod(
    pilot_discovery_bin: Path,
    control_plane: ControlPlane,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> AsyncIterator[IstiodFactory]:
    """The unmodified pilot-discovery with `configSources: [xds://mcpserver, k8s://]`, as our
    users deploy it, authenticated as its own user so the audit log tells its writes apart."""
    started: list[Istiod] = []
    request.node.stash[STARTED_ISTIODS] = started
    kubeconfig = control_plane.istiod_kubeconfig()

    async def start(
        mcpserver_port: int,
        sources: list[dict[str, Any]] | None = None,
        env: dict[str, str] | None = None,
    ) -> Istiod:
        """`sources` replaces [xds://127.0.0.1:mcpserver_port, k8s://] (shards, overlays);
        `env` adds to istiod's environment."""
        workdir = tmp_path / f"istiod{len(started)}"
        workdir.mkdir()
        istiod = Istiod(
            pilot_discovery_bin,
            workdir,
            mcpserver_port,
            kubeconfig=kubeconfig,
            sources=sources,
            env=env or {},
        )
        started.append(istiod)
        # blocking waits run in a thread: the in-process mcpserver must keep answering
        await asyncio.to_thread(istiod.start_ready)
        return istiod

    yield start
    for istiod in started:
        await asyncio.to_thread(istiod.stop)


@pytest.fixture
def zookeeper(tmp_path: Path) -> Iterator[ZooKeeper]:
    server = ZooKeeper(tmp_path / "zk")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def zk_writer(zookeeper: ZooKeeper) -> Iterator[KazooClient]:
    """A separate client that plays the providers' part."""
    client = KazooClient(hosts=zookeeper.address, timeout=10)
    client.start(15)
    yield client
    with contextlib.suppress(Exception):
        client.stop()
        client.close()


@pytest.fixture(scope="session")
def consul_bin() -> Path:
    return consul_binary()


@pytest.fixture
def consul(consul_bin: Path, tmp_path: Path) -> Iterator[ConsulAgent]:
    agent = ConsulAgent(consul_bin, tmp_path / "consul")
    agent.start()
    yield agent
    agent.stop()


@pytest.fixture
async def health() -> AsyncIterator[Health]:
    server = Health()
    await server.start()
    yield server
    await server.stop()


Served = tuple[App, IstiodLikeClient]
ServeFactory = Callable[..., Coroutine[Any, Any, Served]]


@pytest.fixture
def serve(start_app: AppFactory, connect: ClientFactory) -> ServeFactory:
    """`await serve(settings)`: mcpserver started with these settings, an istiod-like client
    connected to it, and that client holding the first complete set (every type answered)
    within `within` seconds; both are stopped at the end of the test."""

    async def start(settings: Settings, within: float = 30.0) -> Served:
        app = await start_app(settings)
        client = await connect(app.port)
        await client.wait_for(lambda c: c.synced(), within)
        return app, client

    return start


def assert_kept_without_endpoints(
    before: DecodedResource | None, kept: DecodedResource | None
) -> None:
    """keep_when_empty: the ServiceEntry served after its last instance left is the one
    served before (hosts, addresses, ports), without endpoints."""
    assert before is not None and kept is not None
    assert list(kept.service_entry.endpoints) == []
    assert list(kept.service_entry.hosts) == list(before.service_entry.hosts)
    assert list(kept.service_entry.addresses) == list(before.service_entry.addresses)
    assert list(kept.service_entry.ports) == list(before.service_entry.ports)
