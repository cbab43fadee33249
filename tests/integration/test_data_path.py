"""A request through a real Envoy, configured by istiod, reaches a backend that only
mcpserver knows about; changing the registry moves the next request."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from testbed.envoy import Envoy
from testbed.kube import Kubectl
from testbed.ports import free_port
from tests.conftest import AppFactory, make_settings, service, write_services
from tests.integration.conftest import IstiodFactory
from tests.integration.test_istiod import until

ROUTES = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge-data-path, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {port}, name: http, protocol: HTTP}}
    bind: 127.0.0.1
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web-data-path, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [edge-data-path]
  http:
  - route:
    - destination: {{host: web.shop.svc.mesh, port: {{number: 8080}}}}
"""


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, int]]:
    """Two HTTP backends on distinct loopback addresses, each answering with its name."""
    runners: list[web.AppRunner] = []
    found: dict[str, int] = {}
    for name, host in (("blue", "127.0.0.3"), ("green", "127.0.0.4")):
        app = web.Application()

        async def answer(_: web.Request, name: str = name) -> web.Response:
            return web.Response(text=name)

        app.router.add_get("/{tail:.*}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, host, port).start()
        runners.append(runner)
        found[host] = port
    yield found
    for runner in runners:
        await runner.cleanup()


def get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello", timeout=3) as response:
        body: bytes = response.read()
        return body.decode()


async def test_request_through_envoy_follows_the_registry(
    tmp_path: Path,
    static_file: Path,
    start_app: AppFactory,
    start_istiod: IstiodFactory,
    envoy_bin: Path,
    kubectl: Kubectl,
    backends: dict[str, int],
) -> None:
    blue_port = backends["127.0.0.3"]
    green_port = backends["127.0.0.4"]

    def web_at(address: str, port: int) -> dict[str, object]:
        entry = service("web", address)
        entry["instances"] = [{"address": address, "ports": {"http": port}}]
        return entry

    write_services(static_file, [web_at("127.0.0.3", blue_port)])
    gateway_port = free_port()
    routes = ROUTES.format(port=gateway_port)
    app = await start_app(make_settings(static_file))
    istiod = await start_istiod(app.port)
    await until(lambda: "shop/web" in istiod.configs())
    envoy = Envoy(envoy_bin, tmp_path, istiod.grpc_port)
    try:
        # the routes live in the apiserver, as an operator's would
        await asyncio.to_thread(kubectl.apply, routes)
        envoy.start()
        await asyncio.to_thread(envoy.wait_admin)
        assert await until(lambda: get(gateway_port) == "blue", within=60)
        write_services(static_file, [web_at("127.0.0.4", green_port)])
        assert await until(lambda: get(gateway_port) == "green", within=60)
        rejected = {k: v for k, v in envoy.stats().items() if k.endswith("update_rejected") and v}
        assert rejected == {}, rejected
    except AssertionError:
        print(envoy.log()[-5000:])
        print(istiod.log()[-3000:])
        raise
    finally:
        await asyncio.to_thread(envoy.stop)
        await asyncio.to_thread(kubectl.delete, routes)
