"""A real Dubbo 3 provider registers in a real ZooKeeper; its services reach real istiod."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.builds import dubbo_provider_classpath
from testbed.ports import free_port
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


class Provider:
    def __init__(self, classpath: str, zookeeper: str, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "provider.log"
        java = shutil.which("java") or "java"
        # Tests bind loopback only. Dubbo refuses 127.x (and then binds 0.0.0.0) but takes
        # IPv6's ::1, and registers it: so this also exercises IPv6 provider URLs.
        env = {**os.environ, "DUBBO_IP_TO_BIND": "::1"}
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    java,
                    "-Xmx256m",
                    "-cp",
                    classpath,
                    "mcpserver.demo.Provider",
                    zookeeper,
                    str(self.port),
                    "greeter",
                    "1.0.0",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def wait_ready(self, within: float = 120) -> None:
        deadline = time.monotonic() + within
        while "PROVIDER READY" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(self.log.read_text(errors="replace")[-4000:])
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def provider(provider_classpath: str, zookeeper: ZooKeeper, tmp_path: Path) -> Iterator[Provider]:
    running = Provider(provider_classpath, zookeeper.address, tmp_path)
    running.wait_ready()
    yield running
    running.stop()


async def test_real_dubbo_provider_reaches_istiod(
    tmp_path: Path,
    zookeeper: ZooKeeper,
    provider: Provider,
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
