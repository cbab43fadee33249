"""A real Dubbo 3 provider registers in a real ZooKeeper; its services reach real istiod."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.builds import dubbo_provider_classpath
from testbed.dubboprovider import DubboProvider
from testbed.xdsprobe import endpoints
from testbed.zookeeper import ZooKeeper
from tests.conftest import AppFactory
from tests.integration.conftest import IstiodFactory
from tests.integration.test_istiod import until
from tests.integration.test_zookeeper import REMOVE_ALL, zk_settings

HOST = "mcpserver.demo.greetingservice"


@pytest.fixture(scope="session")
def provider_classpath() -> str:
    return dubbo_provider_classpath()


@pytest.fixture
def provider(
    provider_classpath: str, zookeeper: ZooKeeper, tmp_path: Path
) -> Iterator[DubboProvider]:
    running = DubboProvider(provider_classpath, zookeeper.address, tmp_path)
    running.wait_ready()
    yield running
    running.stop()


async def test_real_dubbo_provider_reaches_istiod(
    tmp_path: Path,
    zookeeper: ZooKeeper,
    provider: DubboProvider,
    start_app: AppFactory,
    start_istiod: IstiodFactory,
) -> None:
    # the provider stopping removes every service of the registry: a removal the test expects
    app = await start_app(zk_settings(tmp_path, zookeeper, protection=REMOVE_ALL))
    istiod = await start_istiod(app.port)

    def both() -> dict[str, dict[str, Any]] | None:
        c = istiod.configs()
        return c if {f"dubbo/{HOST}", "dubbo/greeter.dubbo"} <= set(c) else None

    configs = await until(both)
    interface = configs[f"dubbo/{HOST}"]["spec"]
    assert interface["hosts"] == [HOST]
    assert interface["ports"] == [{"name": "tcp-dubbo", "number": provider.port, "protocol": "TCP"}]
    (vip,) = interface["addresses"]
    assert vip.startswith("240.")
    (endpoint,) = interface["endpoints"]
    assert endpoint["address"] == "::1"
    assert endpoint["labels"]["application"] == "greeter"
    assert endpoint["labels"]["version"] == "1.0.0"
    application = configs["dubbo/greeter.dubbo"]["spec"]
    assert [e["address"] for e in application["endpoints"]] == ["::1"]
    assert {HOST, "greeter.dubbo"} <= istiod.hosts()
    _, found = await endpoints(istiod.grpc_port, f"outbound|{provider.port}||{HOST}")
    assert found == [f"::1:{provider.port}"]
    # the provider shuts down: Dubbo unregisters, and the services leave istiod
    await asyncio.to_thread(provider.stop)
    await until(
        lambda: not ({f"dubbo/{HOST}", "dubbo/greeter.dubbo"} & set(istiod.configs())), within=60
    )
