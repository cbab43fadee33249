"""Sharded serving with the real istiod (on a real kube-apiserver, `k8s://` beside us).

- An istiod started with istio-config's sharded overlay (four sources, one per shard) holds
  exactly what an istiod reading the whole set holds: names, resourceVersions, creation
  times, labels and specs (VIPs included), from ZooKeeper, Consul and a static file at once;
  and a change to one service is sent on its shard's stream only.
- Changing the shard count 1 -> 4 -> 1, as docs/deployment.md "Sharded serving" orders it (mcpserver
  restarted with each new config, istiods replaced by ones with the new configSources), never
  takes a host out of any istiod's store (sampled every 100 ms), and every istiod keeps
  receiving changes throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kazoo.client import KazooClient

from mcpserver.xds.shards import shard_of, shard_port
from testbed.consulagent import ConsulAgent, Health
from testbed.istiod import Istiod
from testbed.kube import ControlPlane
from testbed.ports import bindable, free_port
from testbed.process import Process, terminate
from testbed.zookeeper import ZooKeeper
from tests.conftest import AppFactory, service, settings_for, write_services
from tests.integration.conftest import IstiodFactory
from tests.integration.test_consul import register
from tests.integration.test_istio_config import mesh_key, point_at
from tests.integration.test_istiod import until
from tests.integration.test_zookeeper import add_provider, provider_url

OURS = ("ServiceEntry", "WorkloadEntry")


def held(istiod: Istiod) -> dict[tuple[str, str], dict[str, Any]]:
    """Our resources in istiod's store, each as istiod keeps it (what a proxy is built from)."""
    return {
        (c["kind"], f"{c['metadata']['namespace']}/{c['metadata']['name']}"): {
            "resourceVersion": c["metadata"].get("resourceVersion"),
            "creationTimestamp": c["metadata"].get("creationTimestamp"),
            "labels": c["metadata"].get("labels"),
            "spec": c["spec"],
        }
        for c in istiod.debug("configz")
        if c.get("kind") in OURS
    }


async def test_four_shards_give_istiod_what_the_whole_set_gives(
    tmp_path: Path,
    zookeeper: ZooKeeper,
    zk_writer: KazooClient,
    consul: ConsulAgent,
    health: Health,
    start_app: AppFactory,
    start_istiod: IstiodFactory,
) -> None:
    for i in range(3):
        interface = f"org.example.shards.Service{i}"
        url = provider_url(f"10.50.{i}.1").replace("org.apache.dubbo.demo.DemoService", interface)
        add_provider(zk_writer, url, iface=interface)
    # passing from the start (TTL checks): health is not what this test is about, and an
    # HTTP check that fails once under load and passes again is a change mid-count
    passing = {"TTL": "10m", "Status": "passing"}
    register(consul, health, "web-1", "10.51.0.1", Check=passing)
    register(consul, health, "web-2", "10.51.0.2", Check=passing)
    static = tmp_path / "static.yaml"
    services = [service(f"svc-{i}", f"10.52.{i}.1", f"10.52.{i}.2") for i in range(8)]
    services.append(
        {
            "name": "ledger",
            "namespace": "shop",
            "ports": [{"name": "tcp-db", "number": 5432, "protocol": "TCP"}],  # wants a VIP
            "instances": [{"address": "10.52.9.1"}],
        }
    )
    write_services(static, services)
    settings = settings_for(
        tmp_path,
        {"kind": "static", "name": "files", "path": str(static), "poll_interval": "100ms"},
        {"kind": "zookeeper", "name": "zk", "hosts": zookeeper.address, "namespace": "dubbo"},
        {"kind": "consul", "name": "consul", "address": consul.address, "namespace": "consul"},
        server={"listen": "127.0.0.1:0", "admin": "127.0.0.1:0", "shards": 4},
    )
    app = await start_app(settings)

    def served() -> set[str]:
        snapshot = app.store.snapshot
        return (
            set() if snapshot is None else {r.name for r in snapshot.sets["ServiceEntry"].resources}
        )

    await until(lambda: len(served()) == 3 + 1 + 9, 30)
    whole = await start_istiod(app.port)
    sources = mesh_key("sharded")["configSources"]  # istio-config's overlay, as users paste it
    point_at(sources, app)
    sharded = await start_istiod(app.port, sources)
    names = served()
    assert len({shard_of(n, 4) for n in names}) == 4, "every shard serves something"

    def holds_all(istiod: Istiod) -> bool:
        store = held(istiod)
        web = store.get(("ServiceEntry", "consul/web.service.consul"), {}).get("spec", {})
        # both web instances, or the second one's arrival is a change on web's shard in the
        # middle of the one-change count below
        every_name = {("ServiceEntry", n) for n in names} <= store.keys()
        return every_name and len(web.get("endpoints", [])) == 2

    def both_hold_all() -> bool:
        return all(holds_all(i) for i in (whole, sharded))

    assert await until(both_hold_all, 60)
    expected = held(whole)
    assert held(sharded) == expected
    ledger = expected[("ServiceEntry", "shop/ledger")]["spec"]
    assert ledger["addresses"] and ledger["addresses"][0].startswith("240.")  # a VIP, the same

    # one changed service: a response on its shard's stream, none on the other three
    streams = {c.shard: c for c in app.clients.open.values() if c.shard != "all"}
    assert sorted(streams) == [f"{k}/4" for k in range(4)]
    before = {shard: c.responses for shard, c in streams.items()}
    services[3]["instances"].append({"address": "10.52.3.3"})
    write_services(static, services)
    home = f"{shard_of('shop/svc-3', 4)}/4"

    def has_new_endpoint() -> bool:
        spec = held(sharded).get(("ServiceEntry", "shop/svc-3"), {}).get("spec", {})
        return "10.52.3.3" in {e["address"] for e in spec.get("endpoints", [])}

    assert await until(has_new_endpoint, 30)
    await until(lambda: held(whole) == held(sharded), 30)
    assert {s: c.responses - before[s] for s, c in streams.items()} == {
        s: (1 if s == home else 0) for s in streams
    }
    assert held(whole) == held(sharded)


class Server:
    """`mcpserver serve` as a process on fixed ports, restarted with another config the way
    a rollout replaces a pod (SIGTERM, then the new one)."""

    def __init__(self, workdir: Path, static: Path) -> None:
        self.workdir = workdir
        self.static = static
        self.listen = free_listen_port()
        self.admin = free_port()
        self.process: Process | None = None
        self.starts = 0

    def start(self, shards: int, previous: int | None = None) -> None:
        self.starts += 1
        config = self.workdir / f"config-{self.starts}.yaml"
        server: dict[str, Any] = {
            "listen": f"127.0.0.1:{self.listen}",
            "admin": f"127.0.0.1:{self.admin}",
            "shards": shards,
        }
        if previous is not None:
            server["previous_shards"] = previous
        config.write_text(
            yaml.safe_dump(
                {
                    "server": server,
                    "shutdown": {"drain": "0s"},
                    "debounce": {"after": "50ms", "max": "200ms"},
                    "registries": [{"kind": "static", "name": "files", "path": str(self.static)}],
                }
            )
        )
        log = self.workdir / f"mcpserver-{self.starts}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MCPSERVER_")}
        command = [sys.executable, "-m", "mcpserver", "serve", f"--config={config}"]
        self.process = Process(command, log, env=env, die_with_us=True)
        self.process.wait_ready(f"mcpserver ({shards} shards)", self.ready)

    def ready(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/readyz", timeout=2) as r:
            return bool(r.status == 200)

    def stop(self) -> None:
        terminate(self.process)
        self.process = None

    def sources(self, shards: int) -> list[dict[str, Any]]:
        return [
            *({"address": f"xds://127.0.0.1:{shard_port(self.listen, shards, k)}"}
              for k in range(shards)),
            {"address": "k8s://"},
        ]  # fmt: skip


def free_listen_port() -> int:
    """A listen port whose 4-shard ports (listen + 400 + k) are free too, below the
    ephemeral range: the server binds them again at each restart, and a port in that range
    can be taken meanwhile as the source port of any outgoing connection."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(10_000, low - 500)
        if all(bindable(p) for p in (port, *(port + 400 + k for k in range(4)))):
            return port
    raise AssertionError("no free port with free shard ports")


class Sampler:
    """Reads each running istiod's store every 100 ms; once an istiod has held every
    expected host, any later read without one of them is a withdrawal."""

    def __init__(self) -> None:
        self.istiods: list[Istiod] = []
        self.expected: set[str] = set()
        self.complete: set[int] = set()  # ids of istiods that held everything once
        self.samples: dict[int, int] = {}
        self.withdrawn: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for istiod in list(self.istiods):
                try:
                    names = {name for kind, name in held(istiod) if kind == "ServiceEntry"}
                except OSError:
                    continue  # not listening (starting or stopping): nothing to read
                key = id(istiod)
                missing = self.expected - names
                if key in self.complete:
                    self.samples[key] = self.samples.get(key, 0) + 1
                    if missing:
                        self.withdrawn.append(f"istiod {istiod.workdir.name} lacks {missing}")
                elif not missing:
                    self.complete.add(key)


@pytest.fixture
def istiods(
    pilot_discovery_bin: Path, control_plane: ControlPlane, tmp_path: Path
) -> Iterator[list[Istiod]]:
    started: list[Istiod] = []
    yield started
    for istiod in started:
        with contextlib.suppress(Exception):
            istiod.stop()


async def test_changing_the_shard_count_never_withdraws_a_host(
    tmp_path: Path,
    pilot_discovery_bin: Path,
    control_plane: ControlPlane,
    istiods: list[Istiod],
) -> None:
    static = tmp_path / "static.yaml"
    services = [service(f"svc-{i}", f"10.60.{i}.1", f"10.60.{i}.2") for i in range(8)]
    write_services(static, services)
    server = Server(tmp_path, static)
    kubeconfig = control_plane.istiod_kubeconfig()

    def istiod_for(shards: int) -> Istiod:
        workdir = tmp_path / f"istiod-{len(istiods)}-{shards}"
        workdir.mkdir()
        istiod = Istiod(
            pilot_discovery_bin, workdir, server.listen, kubeconfig, sources=server.sources(shards)
        )
        istiods.append(istiod)
        istiod.start_ready()
        return istiod

    async def change_reaches(*readers: Istiod) -> None:
        """A new service written now reaches every reader: each is connected and served."""
        name = f"added-{len(services)}"
        services.append(service(name, f"10.61.{len(services)}.1"))
        write_services(static, services)
        for istiod in readers:
            ok = await until(lambda i=istiod: f"shop/{name}" in i.configs(), 30)  # type: ignore[misc]
            assert ok, f"{name} did not reach istiod {istiod.workdir.name}"
        sampler.expected.add(f"shop/{name}")  # from now on, never withdrawn

    try:
        with Sampler() as sampler:
            sampler.expected = {f"shop/svc-{i}" for i in range(8)}
            server.start(shards=1)
            one = await asyncio.to_thread(istiod_for, 1)
            sampler.istiods.append(one)
            assert await until(lambda: id(one) in sampler.complete, 30)

            # 1. mcpserver learns the new layout; the whole set stays on server.listen
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.start, 4)
            await change_reaches(one)
            # 2. istiods move to four sources (a new istiod, then the old one goes)
            four = await asyncio.to_thread(istiod_for, 4)
            sampler.istiods.append(four)
            assert await until(lambda: id(four) in sampler.complete, 30)
            await change_reaches(one, four)
            await asyncio.to_thread(one.stop)
            sampler.istiods.remove(one)

            # 3. and back: mcpserver serves one set again, and four shards beside it until
            #    every istiod reads the whole set
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.start, 1, 4)
            await change_reaches(four)
            back = await asyncio.to_thread(istiod_for, 1)
            sampler.istiods.append(back)
            assert await until(lambda: id(back) in sampler.complete, 30)
            await asyncio.to_thread(four.stop)
            sampler.istiods.remove(four)
            # 4. the previous layout is dropped
            await asyncio.to_thread(server.stop)
            await asyncio.to_thread(server.start, 1)
            await change_reaches(back)
            started = time.monotonic()
            await until(lambda: sampler.samples.get(id(back), 0) > 10, 30)
            assert time.monotonic() - started < 30
        assert not sampler.withdrawn, sampler.withdrawn[:5]
        assert all(sampler.samples.get(id(i), 0) > 10 for i in istiods), sampler.samples
    finally:
        await asyncio.to_thread(server.stop)
