"""A real Dubbo 3 provider registers in a real Nacos-protocol server (r-nacos) through Dubbo's
own nacos:// registry and nacos-client; its interface and its application reach real istiod
with the same hosts and ports as from ZooKeeper."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.builds import dubbo_provider_classpath
from testbed.dubboprovider import DubboProvider
from testbed.nacos import RNacos, rnacos_binary
from testbed.xdsprobe import endpoints
from tests.conftest import AppFactory, settings_for
from tests.integration.conftest import IstiodFactory
from tests.integration.test_istiod import until

HOST = "mcpserver.demo.greetingservice"
APP_HOST = "greeter.dubbo"


@pytest.fixture(scope="session")
def provider_classpath() -> str:
    return dubbo_provider_classpath()


@pytest.fixture
def nacos(tmp_path: Path) -> Iterator[RNacos]:
    server = RNacos(rnacos_binary(), tmp_path / "rnacos")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def provider(provider_classpath: str, nacos: RNacos, tmp_path: Path) -> Iterator[DubboProvider]:
    running = DubboProvider(
        provider_classpath,
        f"nacos://127.0.0.1:{nacos.http_port}",
        tmp_path / "provider",
        own_home=True,
    )
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


async def test_dubbo_provider_on_nacos_reaches_istiod(
    tmp_path: Path,
    nacos: RNacos,
    provider: DubboProvider,
    start_app: AppFactory,
    start_istiod: IstiodFactory,
) -> None:
    settings = settings_for(
        tmp_path,
        {
            "kind": "nacos",
            "name": "nacos",
            "address": nacos.address,
            "namespace": "dubbo",
            "list_interval": "300ms",
        },
        # the provider stopping removes every service of the registry: a removal we expect
        protection={"hold_empty": False, "min_instances": 100},
    )
    app = await start_app(settings)
    istiod = await start_istiod(app.port)

    def both() -> dict[str, dict[str, Any]] | None:
        c = istiod.configs()
        return c if {f"dubbo/{HOST}", f"dubbo/{APP_HOST}"} <= set(c) else None

    configs = await until(both, within=90)
    interface = configs[f"dubbo/{HOST}"]["spec"]
    assert interface["hosts"] == [HOST]
    assert interface["ports"] == [{"name": "tcp-dubbo", "number": provider.port, "protocol": "TCP"}]
    (vip,) = interface["addresses"]
    assert vip.startswith("240.")
    (endpoint,) = interface["endpoints"]
    assert endpoint["address"] == "::1"
    assert endpoint["labels"]["application"] == "greeter"
    assert endpoint["labels"]["version"] == "1.0.0"
    application = configs[f"dubbo/{APP_HOST}"]["spec"]
    assert [e["address"] for e in application["endpoints"]] == ["::1"]
    assert {HOST, APP_HOST} <= istiod.hosts()
    _, found = await endpoints(istiod.grpc_port, f"outbound|{provider.port}||{HOST}")
    assert found == [f"::1:{provider.port}"]
    # the provider shuts down: Dubbo deregisters (its ephemeral instances go with its
    # connection), and the services leave istiod
    await asyncio.to_thread(provider.stop)
    await until(
        lambda: not ({f"dubbo/{HOST}", f"dubbo/{APP_HOST}"} & set(istiod.configs())), within=60
    )
