"""Fixtures for the integration tier: real istiod (harness) and Envoy, built once and cached."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from tests.integration.istiod import Istiod
from tests.integration.real import envoy_binary, istiod_binary


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
