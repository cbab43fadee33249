"""Faults with the real components (issue 16): each registry's server killed, frozen or cut
off, istiod killed, mcpserver killed, while one mcpserver watches ZooKeeper, Consul, Nacos
(r-nacos) and Eureka at once and the unmodified istiod consumes it.

Every test runs inside `observed()` (tests/resilience/faults_mesh.py): before the fault the
watching client, istiod's /debug/configz and a sidecar's xDS from istiod's 15010 equal what
the registries hold; during it, a change in a registry that is not faulted must still flow;
after recovery, a change in the faulted registry must flow too, then every view equals what
the registries hold again, read from the servers themselves. All along, neither the watching
client on mcpserver (every ServiceEntry set it was sent) nor istiod (/debug/configz sampled
every 100 ms) may lack any endpoint that was live before the fault, and mcpserver's
/debug/registries must have called the registry degraded during the fault and ready after.

One world for the module (JVM and istiod start-ups dominate): the tests run in order and
each leaves it whole; each adds its own instances at addresses of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from testbed.builds import consul_binary
from testbed.consulagent import ConsulAgent
from testbed.eureka import EurekaServer, eureka_server_jar
from testbed.istiod import Istiod
from testbed.kube import ControlPlane
from testbed.nacos import RNacos, rnacos_binary
from testbed.zookeeper import ZooKeeper
from tests.integration.test_eureka import Heartbeats
from tests.integration.test_failover import Replica
from tests.resilience.faults_mesh import (
    CONSUL_PORT,
    DUBBO_PORT,
    EUREKA_PORT,
    NACOS_PORT,
    SESSION_TIMEOUT,
    Mesh,
    all_acked,
    istiod_streams,
    observed,
    registry_states,
    until,
)
from tests.resilience.faults_proxy import StallProxy

pytestmark = pytest.mark.integration

ALPHA, BETA = "org.example.faults.Alpha", "org.example.faults.Beta"


def seed(mesh: Mesh) -> None:
    """A few services of several instances in each registry."""
    for i in range(1, 4):
        mesh.add_provider(ALPHA, f"10.61.0.{i}")
        mesh.add_provider(BETA, f"10.61.1.{i}")
        mesh.add_consul("c-alpha", f"10.62.0.{i}")
        mesh.add_consul("c-beta", f"10.62.1.{i}")
        mesh.add_eureka("E-ALPHA", f"10.64.0.{i}")
        mesh.add_eureka("E-BETA", f"10.64.1.{i}")
    for i in range(1, 3):
        mesh.add_nacos("n-alpha", f"10.63.0.{i}")
        mesh.add_nacos("n-beta", f"10.63.1.{i}")


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, control_plane: ControlPlane, pilot_discovery_bin: Path
) -> Iterator[Mesh]:
    """Every server started from this (the main) thread, so that the ones started under
    setpriv's parent-death signal live as long as the test process."""
    root = tmp_path_factory.mktemp("faults")
    eureka = EurekaServer(eureka_server_jar(), root / "eureka")
    zookeeper = ZooKeeper(root / "zookeeper")
    consul = ConsulAgent(consul_binary(), root / "consul", persistent=True)
    nacos = RNacos(rnacos_binary(), root / "nacos")
    with contextlib.ExitStack() as stack, pytest.MonkeyPatch.context() as env:
        # istiod's debounce kept short: "istiod has it" comes quickly
        env.setenv("PILOT_DEBOUNCE_AFTER", "100ms")
        env.setenv("PILOT_DEBOUNCE_MAX", "1s")
        eureka.launch()  # the slowest to start: it starts while the others do
        stack.callback(eureka.stop)
        zookeeper.start()
        stack.callback(zookeeper.stop)
        consul.start()
        stack.callback(consul.stop)
        nacos.start()
        stack.callback(nacos.stop)
        zk_proxy, consul_proxy = StallProxy(zookeeper.port), StallProxy(consul.http_port)
        for proxy in (zk_proxy, consul_proxy):
            proxy.start()
            stack.callback(proxy.stop)
        eureka.wait_ready()
        beats = Heartbeats(eureka, 0.5)
        stack.callback(beats.close)
        config = root / "mcpserver.yaml"
        mcpserver = Replica(config, "mcpserver")
        world = Mesh(zookeeper, zk_proxy, consul, consul_proxy, nacos, eureka, beats, mcpserver)
        seed(world)
        config.write_text(yaml.safe_dump(world.mcpserver_config()))
        mcpserver.start()
        stack.callback(mcpserver.stop)
        istiod = Istiod(
            pilot_discovery_bin, root / "istiod", mcpserver.port, control_plane.istiod_kubeconfig()
        )
        (root / "istiod").mkdir()
        stack.callback(istiod.stop)
        istiod.start_ready()
        world.istiod = istiod
        yield world


@pytest.fixture
def world(mesh: Mesh) -> Iterator[Mesh]:
    """The module's world, made whole again after each test whatever happened in it (a
    failed test must not fail the next ones)."""
    try:
        yield mesh
    finally:
        mesh.beats.paused.clear()
        for proxy in (mesh.zk_proxy, mesh.consul_proxy):
            proxy.thaw()
        zk = mesh.zookeeper.process
        if zk is not None and zk.poll() is None:
            os.kill(zk.pid, signal.SIGCONT)
        for process, start in (
            (mesh.zookeeper.process, mesh.zookeeper.start),
            (mesh.consul.process, mesh.consul.start),
            (mesh.nacos.process, mesh.nacos.start),
            (mesh.mcpserver.process, mesh.mcpserver.start),
        ):
            if process is None or process.poll() is not None:
                start()
        if mesh.eureka.process is None or mesh.eureka.process.poll() is not None:
            mesh.eureka.start()
        if mesh.istiod is not None and (
            mesh.istiod.process is None or mesh.istiod.process.poll() is not None
        ):
            mesh.istiod.start_ready()


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL, and reap it: a crash, not a shutdown."""
    process.kill()
    process.wait(10)


async def frozen_past(since: float, seconds: float) -> None:
    """Keep a fault in place until `seconds` after `since`: the fault's length is what is
    being tested (past a session timeout), not a wait for something to happen."""
    remaining = since + seconds - time.monotonic()
    if remaining > 0:
        await asyncio.sleep(remaining)


# --------------------------------------------------------------------------- ZooKeeper


async def test_zookeeper_killed_and_restarted(world: Mesh) -> None:
    async with observed(world) as fault:
        assert world.zookeeper.process is not None
        kill(world.zookeeper.process)
        await fault.status("zk", "degraded")
        world.add_consul("c-alpha", "10.62.0.11")  # not faulted: flows meanwhile
        await fault.flows(("c-alpha.service.consul", "10.62.0.11", CONSUL_PORT))
        await asyncio.to_thread(world.zookeeper.start)  # same port, same data dir
        await fault.status("zk", "ready")
        world.add_provider(ALPHA, "10.61.0.11")
        await fault.flows(("org.example.faults.alpha", "10.61.0.11", DUBBO_PORT))


async def test_zookeeper_frozen_past_the_session_timeout(world: Mesh) -> None:
    async with observed(world) as fault:
        assert world.zookeeper.process is not None
        frozen = time.monotonic()
        os.kill(world.zookeeper.process.pid, signal.SIGSTOP)
        await fault.status("zk", "degraded")
        world.add_nacos("n-alpha", "10.63.0.12")  # not faulted: flows meanwhile
        await fault.flows(("n-alpha.nacos", "10.63.0.12", NACOS_PORT))
        await frozen_past(frozen, SESSION_TIMEOUT + 2)  # every session it had has expired
        os.kill(world.zookeeper.process.pid, signal.SIGCONT)
        await fault.status("zk", "ready")
        world.add_provider(BETA, "10.61.1.12")
        await fault.flows(("org.example.faults.beta", "10.61.1.12", DUBBO_PORT))


async def test_zookeeper_network_path_frozen(world: Mesh) -> None:
    async with observed(world) as fault:
        frozen = time.monotonic()
        world.zk_proxy.freeze()
        await fault.status("zk", "degraded")
        world.add_consul("c-beta", "10.62.1.13")
        await fault.flows(("c-beta.service.consul", "10.62.1.13", CONSUL_PORT))
        # ZooKeeper itself runs on: the providers' writes land, unseen behind the partition
        world.add_provider(ALPHA, "10.61.0.13")
        await frozen_past(frozen, SESSION_TIMEOUT + 2)  # mcpserver's session has expired
        world.zk_proxy.thaw()
        await fault.status("zk", "ready")
        await fault.flows(("org.example.faults.alpha", "10.61.0.13", DUBBO_PORT))
        world.add_provider(BETA, "10.61.1.13")
        await fault.flows(("org.example.faults.beta", "10.61.1.13", DUBBO_PORT))


# --------------------------------------------------------------------------- Consul


async def test_consul_agent_restarted(world: Mesh) -> None:
    async with observed(world) as fault:
        await asyncio.to_thread(world.consul.stop)
        await fault.status("consul", "degraded")
        world.add_provider(BETA, "10.61.1.14")
        await fault.flows(("org.example.faults.beta", "10.61.1.14", DUBBO_PORT))
        await asyncio.to_thread(world.consul.start)  # same ports, same data dir
        await fault.status("consul", "ready")
        world.add_consul("c-beta", "10.62.1.14")
        await fault.flows(("c-beta.service.consul", "10.62.1.14", CONSUL_PORT))


async def test_consul_network_path_frozen(world: Mesh) -> None:
    async with observed(world) as fault:
        world.consul_proxy.freeze()
        await fault.status("consul", "degraded")
        world.add_nacos("n-beta", "10.63.1.15")
        await fault.flows(("n-beta.nacos", "10.63.1.15", NACOS_PORT))
        world.add_consul("c-alpha", "10.62.0.15")  # behind the partition
        world.consul_proxy.thaw()
        await fault.status("consul", "ready")
        await fault.flows(("c-alpha.service.consul", "10.62.0.15", CONSUL_PORT))
        world.add_consul("c-beta", "10.62.1.15")
        await fault.flows(("c-beta.service.consul", "10.62.1.15", CONSUL_PORT))


# --------------------------------------------------------------------------- Nacos, Eureka


async def test_nacos_server_restarted(world: Mesh) -> None:
    async with observed(world) as fault:
        await asyncio.to_thread(world.nacos.stop)
        await fault.status("nacos", "degraded")
        world.add_consul("c-alpha", "10.62.0.16")
        await fault.flows(("c-alpha.service.consul", "10.62.0.16", CONSUL_PORT))
        world.nacos.start()  # same ports, same data dir (its instances are persistent)
        await fault.status("nacos", "ready")
        world.add_nacos("n-alpha", "10.63.0.16")
        await fault.flows(("n-alpha.nacos", "10.63.0.16", NACOS_PORT))


async def test_eureka_server_restarted(world: Mesh) -> None:
    """Eureka keeps its registry in memory: restarted, it is empty until each instance's
    next heartbeat (404) registers it again, up to 30 s later with Eureka's Java client, so
    mcpserver sees it empty first (here the heartbeats pause until it has), and its
    protection must hold that. The instances come back one by one, and the hold lasts until
    nearly all are back (protection.release_share): every endpoint stays protected, Eureka's
    as the others'."""
    async with observed(world) as fault:
        world.beats.paused.set()
        await asyncio.to_thread(world.eureka.stop)
        await fault.status("eureka", "degraded")
        world.add_provider(ALPHA, "10.61.0.17")
        await fault.flows(("org.example.faults.alpha", "10.61.0.17", DUBBO_PORT))
        world.eureka.launch()  # on this thread: see EurekaServer.start
        await asyncio.to_thread(world.eureka.wait_ready)
        await fault.held("eureka")  # mcpserver read the empty registry, and holds it
        before = world.beats.registered
        world.beats.paused.clear()
        try:
            await until(
                "every Eureka instance registered again",
                lambda: world.beats.registered - before >= len(world.beats.instances),
            )
        except AssertionError as err:
            raise AssertionError(f"{err}; heartbeats: {world.beats.failures[-5:]}") from None
        await fault.status("eureka", "ready")  # the hold ends once all are back
        world.add_eureka("E-BETA", "10.64.1.17")
        await fault.flows(("e-beta.eureka", "10.64.1.17", EUREKA_PORT))


# --------------------------------------------------------------------------- istiod, mcpserver


async def test_istiod_killed_and_restarted(world: Mesh) -> None:
    istiod = world.istiod
    assert istiod is not None
    async with observed(world) as fault:
        assert len(istiod_streams(world.mcpserver)) == 1
        istiod.kill()
        await until(
            "mcpserver sees istiod's stream end", lambda: not istiod_streams(world.mcpserver)
        )
        # changes while istiod is away: it must have them when it is back
        world.add_provider(BETA, "10.61.1.18")
        world.add_consul("c-beta", "10.62.1.18")
        await fault.flows(("org.example.faults.beta", "10.61.1.18", DUBBO_PORT), istiod=False)
        await fault.flows(("c-beta.service.consul", "10.62.1.18", CONSUL_PORT), istiod=False)
        istiod.start()  # on this thread (setpriv's parent-death signal), same ports
        await asyncio.to_thread(istiod.wait_ready)
        await until(
            "istiod's new stream, every type acknowledged", lambda: all_acked(world.mcpserver)
        )
        await fault.reaches_istiod(("org.example.faults.beta", "10.61.1.18", DUBBO_PORT))
        await fault.reaches_istiod(("c-beta.service.consul", "10.62.1.18", CONSUL_PORT))
        world.add_nacos("n-beta", "10.63.1.18")
        await fault.flows(("n-beta.nacos", "10.63.1.18", NACOS_PORT))


async def test_mcpserver_killed_and_restarted_while_istiod_runs(world: Mesh) -> None:
    async with observed(world) as fault:
        streams = fault.watch.streams
        world.mcpserver.kill()
        world.add_nacos("n-alpha", "10.63.0.19")  # while mcpserver is down
        world.mcpserver.start()  # same ports; blocks until ready (the sampler has a thread)
        states = registry_states(world.mcpserver)
        assert set(states.values()) == {"ready"}, states
        await until("the watch's new stream", lambda: fault.watch.streams > streams)
        await until(
            "istiod's new stream, every type acknowledged", lambda: all_acked(world.mcpserver)
        )
        await fault.flows(("n-alpha.nacos", "10.63.0.19", NACOS_PORT))
        world.add_provider(ALPHA, "10.61.0.19")
        await fault.flows(("org.example.faults.alpha", "10.61.0.19", DUBBO_PORT))
