"""Replica failover that istiod does not notice: two mcpserver processes over the same
registries (a real ZooKeeper and a static file), istiod dialing one address that a loopback
forwarder points at replica A, then at replica B after A is killed (SIGKILL: a crash, not a
drain). Replicas serve byte-identical resources (versions and VIPs are functions of the
registries' content), so istiod's store takes no update at all, and nothing is pushed to
the Envoy it feeds.

"No push" is measured against a control: a new provider (a sentinel) registered before the
failover costs istiod a known number of inbound updates and Envoy a known number of CDS
updates; a second sentinel registered after the failover, once Envoy has it, must have cost
exactly as much. istiod counts inbound updates before debouncing (pilot_inbound_updates),
so a failover event merged into the sentinel's push would still show.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml
from kazoo.client import KazooClient

from mcpserver.xds.client import DecodedResource, IstiodLikeClient
from mcpserver.xds.typeurls import ISTIO_1_29
from testbed.envoy import Envoy
from testbed.forwarder import Forwarder
from testbed.istiod import Istiod
from testbed.ports import free_port
from testbed.process import Process, tail, terminate
from testbed.zookeeper import ZooKeeper
from tests.conftest import eventually, service, write_services
from tests.integration.conftest import IstiodFactory
from tests.integration.test_istiod import until
from tests.integration.test_zookeeper import add_provider, provider_url

T = TypeVar("T")

INTERFACES = [f"org.example.failover.Service{i}" for i in range(3)]


def register(zk: KazooClient, interface: str, address: str) -> None:
    url = provider_url(address, interface=interface).replace(
        "org.apache.dubbo.demo.DemoService", interface
    )
    add_provider(zk, url, iface=interface)


@dataclass
class Replica:
    """One `mcpserver serve` process, as a pod runs it."""

    config: Path
    name: str
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: Process | None = None
    env: dict[str, str] = field(default_factory=dict)
    """More MCPSERVER_ settings (peers, state_dir) for this replica."""
    token: str | None = None
    """The admin token its config sets, if any (for its /debug pages)."""

    @property
    def log_path(self) -> Path:
        return self.config.parent / f"{self.name}.log"

    def start(self) -> None:
        command = [
            sys.executable, "-m", "mcpserver", "serve", f"--config={self.config}",
        ]  # fmt: skip
        env = {
            "MCPSERVER_SERVER__LISTEN": f"127.0.0.1:{self.port}",
            "MCPSERVER_SERVER__ADMIN": f"127.0.0.1:{self.admin_port}",
            **self.env,
        }
        self.process = Process(command, self.log_path, env={**_environ(), **env}, die_with_us=True)
        self.process.wait_ready(f"replica {self.name}", self.ready)

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.admin_port}/readyz"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)

    def clients(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.debug("clients")
        return found

    def debug(self, page: str) -> Any:
        """An admin /debug page, decoded (with the token when the config sets one)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}/debug/{page}", headers=headers
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return yaml.safe_load(response.read())

    def confirm(self, registry: str) -> tuple[int, Any]:
        """POST /debug/registries/NAME/confirm: (status, answer)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_port}/debug/registries/{registry}/confirm",
            method="POST",
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, yaml.safe_load(response.read())
        except urllib.error.HTTPError as err:
            return err.code, yaml.safe_load(err.read())

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        terminate(self.process)


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MCPSERVER_")}


def fingerprint(resources: list[DecodedResource]) -> list[tuple[Any, ...]]:
    """Everything istiod is given of each resource, its spec as deterministic bytes."""
    return sorted(
        (
            r.kind, r.namespace, r.name, r.version, r.create_time,
            sorted(r.labels.items()), sorted(r.annotations.items()),
            r.spec.SerializeToString(deterministic=True),
        )
        for r in resources
    )  # fmt: skip


async def served(port: int) -> dict[str, list[tuple[Any, ...]]]:
    """What a replica serves istiod, per kind, as an istiod-like client receives it."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = IstiodLikeClient(channel, ISTIO_1_29)
        task = asyncio.create_task(client.run())
        try:
            await client.wait_for(lambda c: c.synced(), 30)
            return {k: fingerprint(client.latest(k)) for k in ("ServiceEntry", "WorkloadEntry")}
        finally:
            client.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def ours(istiod: Istiod) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Our resources in istiod's store (/debug/configz), whole: metadata (resourceVersion,
    annotations) and spec (addresses: the VIPs)."""
    return {
        (c["kind"], c["metadata"]["namespace"], c["metadata"]["name"]): c
        for c in istiod.debug("configz")
        if c.get("kind") in ("ServiceEntry", "WorkloadEntry")
    }


def inbound_updates(istiod: Istiod) -> dict[str, float]:
    """istiod's pilot_inbound_updates by type: every config/service/endpoint event its
    registries raised, counted before debouncing."""
    url = f"http://127.0.0.1:{istiod.monitoring_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for match in re.finditer(r'^pilot_inbound_updates\{type="([^"]+)"\} (\S+)$', text, re.M):
        found[match[1]] = float(match[2])
    return found


def envoy_updates(envoy: Envoy) -> dict[str, int]:
    stats = envoy.stats()
    return {name: stats.get(name, 0) for name in ("cluster_manager.cds.update_attempt",)}


def still_for(read: Callable[[], T], seconds: float) -> Callable[[], bool]:
    """A check for `until`: true once `read()` has returned the same value for `seconds`."""
    last: list[tuple[T, float]] = []

    def check() -> bool:
        value, now = read(), time.monotonic()
        if not last or last[0][0] != value:
            last[:] = [(value, now)]
        return now - last[0][1] >= seconds

    return check


def delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after.keys() | before.keys()}


@pytest.fixture
async def replicas(tmp_path: Path, zookeeper: ZooKeeper) -> AsyncIterator[tuple[Replica, Replica]]:
    static = tmp_path / "services.yaml"
    write_services(
        static,
        [
            service("cart", "10.1.0.1", "10.1.0.2"),
            # a TCP service without an address: a VIP from vip.cidr
            service(
                "ledger", "10.1.1.1", ports=[{"name": "tcp", "number": 7000, "protocol": "TCP"}]
            ),
        ],
    )
    config = tmp_path / "mcpserver.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "debounce": {"after": "50ms", "max": "500ms"},
                "shutdown": {"drain": "0.5s", "grace": "5s"},
                "registries": [
                    {"kind": "zookeeper", "name": "zk", "hosts": zookeeper.address,
                     "namespace": "dubbo"},
                    {"kind": "static", "name": "files", "path": str(static),
                     "poll_interval": "100ms"},
                ],
            }
        )
    )  # fmt: skip
    pair = Replica(config, "a"), Replica(config, "b")
    try:
        for replica in pair:
            await asyncio.to_thread(replica.start)
        yield pair
    finally:
        for replica in pair:
            await asyncio.to_thread(replica.stop)


async def test_istiod_fails_over_to_another_replica_without_an_update_or_a_push(
    zk_writer: KazooClient,
    replicas: tuple[Replica, Replica],
    start_istiod: IstiodFactory,
    envoy_bin: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = replicas
    for i, interface in enumerate(INTERFACES):
        register(zk_writer, interface, f"10.30.0.{i + 1}")
    hosts = {i.lower() for i in INTERFACES}
    # both replicas see every provider, and serve byte for byte the same
    assert await _eventually_identical(a, b, expected=len(INTERFACES) + 2)

    # istiod's debounce kept short so that "past the next push" comes quickly
    monkeypatch.setenv("PILOT_DEBOUNCE_AFTER", "100ms")
    monkeypatch.setenv("PILOT_DEBOUNCE_MAX", "1s")
    forwarder = Forwarder(a.port)
    await forwarder.start()
    istiod = await start_istiod(forwarder.port)
    envoy = Envoy(envoy_bin, tmp_path, istiod.grpc_port)
    try:
        envoy.start()
        await asyncio.to_thread(envoy.wait_admin)

        def has_cluster(host: str) -> bool:
            return f"||{host}" in envoy.config_dump()

        await until(lambda: all(has_cluster(h) for h in hosts), within=60)
        assert forwarder.connections == [a.port]

        # istiod may still push what it learned at start (its debounce holds a push up to
        # 1 s): counts are taken once both have been still for two debounce maxima
        def counts() -> tuple[dict[str, float], dict[str, int]]:
            return inbound_updates(istiod), envoy_updates(envoy)

        await until(still_for(counts, 2.0), within=60)
        # control: what one new provider costs istiod and Envoy
        before_in, before_envoy = counts()
        register(zk_writer, "org.example.failover.Sentinel1", "10.30.1.1")
        await until(lambda: has_cluster("org.example.failover.sentinel1"), within=60)
        await until(
            lambda: (
                delta(envoy_updates(envoy), before_envoy)["cluster_manager.cds.update_attempt"] > 0
            )
        )
        control_in = delta(inbound_updates(istiod), before_in)
        control_envoy = delta(envoy_updates(envoy), before_envoy)
        assert await _eventually_identical(a, b, expected=len(INTERFACES) + 3)

        # the failover: new connections to B, then A dies
        await until(still_for(counts, 2.0), within=60)
        held = ours(istiod)
        before_in, before_envoy = counts()
        forwarder.point_at(b.port)
        await asyncio.to_thread(a.kill)
        # istiod reconnected to B, and acknowledged every type B sent it
        await until(lambda: _acked_everything(b), within=60)
        assert forwarder.connections == [a.port, b.port]
        # past the next push: a second sentinel through B reaches Envoy
        register(zk_writer, "org.example.failover.Sentinel2", "10.30.1.2")
        await until(lambda: has_cluster("org.example.failover.sentinel2"), within=60)
        await until(
            lambda: (
                delta(envoy_updates(envoy), before_envoy)["cluster_manager.cds.update_attempt"]
                >= control_envoy["cluster_manager.cds.update_attempt"]
            )
        )
        after = ours(istiod)
        failover_in = delta(inbound_updates(istiod), before_in)
        failover_envoy = delta(envoy_updates(envoy), before_envoy)

        # istiod's store: every resource as it was (resourceVersion, annotations, VIPs)
        sentinel = ("ServiceEntry", "dubbo", "org.example.failover.sentinel2")
        assert set(after) - set(held) == {sentinel}
        changed = [key for key in held if after.get(key) != held[key]]
        assert changed == [], f"changed across the failover: {changed}"
        # no update beyond the sentinel's own, and no push to Envoy beyond the sentinel's
        assert failover_in == control_in, (failover_in, control_in)
        assert (
            failover_envoy["cluster_manager.cds.update_attempt"]
            == control_envoy["cluster_manager.cds.update_attempt"]
        ), (failover_envoy, control_envoy)
        vips = {
            k[2]: c["spec"].get("addresses") for k, c in after.items() if k[0] == "ServiceEntry"
        }
        print(f"\nfailover: {len(held)} resources unchanged, VIPs {vips}; inbound updates "
              f"{failover_in} (control {control_in}); Envoy {failover_envoy} (control {control_envoy})",
              file=sys.stderr)  # fmt: skip
    except AssertionError:
        print(tail(a.log_path), tail(b.log_path), envoy.log()[-3000:], sep="\n----\n")
        raise
    finally:
        await asyncio.to_thread(envoy.stop)
        with contextlib.suppress(Exception):
            await forwarder.stop()


def _acked_everything(replica: Replica) -> bool:
    """An istiod stream on the replica, every type it was sent acknowledged."""
    clients = replica.clients()
    return bool(clients) and all(
        t["acked"] == t["sent"] and t["sent"] for c in clients for t in c["types"].values()
    )


async def _eventually_identical(a: Replica, b: Replica, expected: int) -> bool:
    """Both replicas serve `expected` ServiceEntries, byte-identical (within 30 s)."""

    async def identical() -> bool:
        left, right = await served(a.port), await served(b.port)
        assert len(left["ServiceEntry"]) == expected and left == right, (
            f"replicas differ or incomplete:\n{left}\n{right}"
        )
        return True

    identical_now: bool = await eventually(identical, within=30, every=0.2)
    return identical_now
