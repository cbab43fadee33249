"""Kubernetes-native routing on our hosts: a DestinationRule's version subsets and a
VirtualService's split, applied with kubectl, steer real HTTP requests through Envoy to the
backends of one version, whether our instances are inline endpoints or WorkloadEntries.

This is what an operator does for a canary of a registry service: the `version` label our
endpoints carry (from Dubbo, Consul tags or the static file) is all the subsets need.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from testbed.builds import consul_binary
from testbed.consulagent import ConsulAgent
from testbed.envoy import Envoy
from testbed.kube import Kubectl
from testbed.ports import free_port
from tests.conftest import AppFactory, settings_for, write_services
from tests.integration.conftest import IstiodFactory
from tests.integration.test_istiod import until

VERSIONS = {"v1": "127.0.0.3", "v2": "127.0.0.4"}


def routing(namespace: str, host: str, port: int, gateway_port: int, v1: int, v2: int) -> str:
    """A Gateway for the Envoy node, a DestinationRule with one subset per version, and a
    VirtualService: `x-canary: yes` goes to v2, the rest is split v1:v2 by weight."""
    destination = f"host: {host}, port: {{number: {port}}}"
    return f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge, namespace: {namespace}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {gateway_port}, name: http, protocol: HTTP}}
    bind: 127.0.0.1
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: web, namespace: {namespace}}}
spec:
  host: {host}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web, namespace: {namespace}}}
spec:
  hosts: ["*"]
  gateways: [edge]
  http:
  - match: [{{headers: {{x-canary: {{exact: "yes"}}}}}}]
    route: [{{destination: {{{destination}, subset: v2}}}}]
  - route:
    - {{destination: {{{destination}, subset: v1}}, weight: {v1}}}
    - {{destination: {{{destination}, subset: v2}}, weight: {v2}}}
"""


@pytest.fixture
async def versioned_backends() -> AsyncIterator[int]:
    """One HTTP backend per version, each on its own loopback address and all on one port
    (as a registry's instances usually are), answering with its version."""
    runners: list[web.AppRunner] = []
    port = free_port()
    for version, address in VERSIONS.items():
        app = web.Application()

        async def answer(_: web.Request, version: str = version) -> web.Response:
            return web.Response(text=version)

        app.router.add_get("/{tail:.*}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, address, port).start()
        runners.append(runner)
    yield port
    for runner in runners:
        await runner.cleanup()


def get(port: int, canary: bool = False) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/hello")
    if canary:
        request.add_header("x-canary", "yes")
    with urllib.request.urlopen(request, timeout=3) as response:
        body: bytes = response.read()
        return body.decode()


def answers(port: int, count: int, canary: bool = False) -> list[str]:
    return [get(port, canary) for _ in range(count)]


@pytest.fixture
def on_exit() -> Iterator[contextlib.ExitStack]:
    """Clean-ups a test registers as it goes; they run after start_app's servers stop."""
    with contextlib.ExitStack() as stack:
        yield stack


def static_registry(directory: Path, namespace: str, port: int, mode: str) -> dict[str, Any]:
    static = directory / "services.yaml"
    instances = [
        {"address": address, "labels": {"version": version}}
        for version, address in VERSIONS.items()
    ]
    ports = [{"name": "http", "number": port, "protocol": "HTTP"}]
    write_services(
        static, [{"name": "web", "namespace": namespace, "ports": ports, "instances": instances}]
    )
    return {
        "kind": "static",
        "name": "files",
        "path": str(static),
        "poll_interval": "50ms",
        "endpoints": mode,
    }


def consul_registry(agent: ConsulAgent, namespace: str, port: int) -> dict[str, Any]:
    """Two instances of `web` in Consul, the version in a tag as Consul users write it."""
    for version, address in VERSIONS.items():
        agent.register(
            Name="web",
            ID=f"web-{version}",
            Address=address,
            Port=port,
            Tags=[f"version={version}"],
            Meta={"protocol": "http"},
        )
    return {
        "kind": "consul",
        "name": "consul",
        "address": agent.address,
        "namespace": namespace,
        "wait": "2s",
    }


@pytest.mark.parametrize("source", ["static-inline", "static-workloadentry", "consul"])
async def test_destinationrule_subsets_and_virtualservice_split_through_envoy(
    source: str,
    tmp_path: Path,
    on_exit: contextlib.ExitStack,
    start_app: AppFactory,
    start_istiod: IstiodFactory,
    kubectl: Kubectl,
    envoy_bin: Path,
    versioned_backends: int,
) -> None:
    namespace = f"canary-{source}"
    port = versioned_backends
    if source == "consul":
        agent = ConsulAgent(consul_binary(), tmp_path / "consul")
        agent.start()
        on_exit.callback(agent.stop)
        registry = consul_registry(agent, namespace, port)
        host = "web.service.consul"
    else:
        registry = static_registry(tmp_path, namespace, port, source.removeprefix("static-"))
        host = f"web.{namespace}.svc.mesh"
    app = await start_app(settings_for(tmp_path, registry))
    istiod = await start_istiod(app.port)
    gateway = free_port()
    await asyncio.to_thread(kubectl.ensure_namespace, namespace)
    applied = [routing(namespace, host, port, gateway, 100, 0)]
    envoy = Envoy(envoy_bin, tmp_path, istiod.grpc_port)
    try:
        await asyncio.to_thread(kubectl.apply, applied[0])
        envoy.start()
        await asyncio.to_thread(envoy.wait_admin)
        # everything to v1, the canary header to v2
        await until(lambda: get(gateway) == "v1" and get(gateway, canary=True) == "v2", within=60)
        assert set(await asyncio.to_thread(answers, gateway, 20)) == {"v1"}
        assert set(await asyncio.to_thread(answers, gateway, 10, True)) == {"v2"}
        # shift the weights with kubectl: everything to v2
        applied.append(routing(namespace, host, port, gateway, 0, 100))
        await asyncio.to_thread(kubectl.apply, applied[-1])
        await until(lambda: get(gateway) == "v2", within=60)
        assert set(await asyncio.to_thread(answers, gateway, 20)) == {"v2"}
        # half and half: both versions answer (all 40 on one side: p = 2^-39)
        applied.append(routing(namespace, host, port, gateway, 50, 50))
        await asyncio.to_thread(kubectl.apply, applied[-1])
        await until(lambda: set(answers(gateway, 40)) == {"v1", "v2"}, within=60)
        rejected = {k: v for k, v in envoy.stats().items() if k.endswith("update_rejected") and v}
        assert rejected == {}, rejected
    except AssertionError:
        print(envoy.log()[-5000:])
        print(istiod.log()[-3000:])
        raise
    finally:
        await asyncio.to_thread(envoy.stop)
        await asyncio.to_thread(kubectl.delete, applied[0])
