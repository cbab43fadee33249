"""Fixtures for the integration tier: real istiod (harness) and Envoy, built once and cached."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from tests.integration.istiod import Istiod
from tests.integration.real import envoy_binary, istiod_binary
from tests.integration.zookeeper import ZooKeeper


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def istiod_bin() -> Path:
    return istiod_binary()


@pytest.fixture(scope="session")
def envoy_bin() -> Path:
    return envoy_binary()


IstiodFactory = Callable[..., Coroutine[Any, Any, Istiod]]


@pytest.fixture
async def start_istiod(istiod_bin: Path, tmp_path: Path) -> AsyncIterator[IstiodFactory]:
    started: list[Istiod] = []

    async def start(mcpserver_port: int, config_dir: Path | None = None) -> Istiod:
        workdir = tmp_path / f"istiod{len(started)}"
        workdir.mkdir()
        istiod = Istiod(istiod_bin, workdir, mcpserver_port, config_dir)
        istiod.start()
        started.append(istiod)
        # blocking waits run in a thread: the in-process mcpserver must keep answering
        await asyncio.to_thread(istiod.wait_ready)
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
