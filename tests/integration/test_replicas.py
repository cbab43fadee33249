"""Replicas compare notes (issue 27), as pods run them: `mcpserver serve` processes naming each
other as `peers`. A replica started while its peer holds a removal (a Eureka server refilling
after a restart) serves what the peer serves, byte for byte, so istiod failing over to it
loses nothing; a confirmation sent to one replica ends the hold on all of them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed.eureka import EurekaServer, eureka_server_jar
from testbed.forwarder import Forwarder
from testbed.istiod import Istiod
from testbed.process import tail
from tests.conftest import service, write_services
from tests.integration.conftest import IstiodFactory
from tests.integration.test_eureka import Heartbeats
from tests.integration.test_failover import Replica, _acked_everything, served
from tests.integration.test_istiod import until

TOKEN = "replicas-test-token"
SIX = [service(f"s{i}", *(f"10.6.{i}.{j}" for j in range(1, 6))) for i in range(6)]


def write_config(path: Path, registries: list[dict[str, Any]], **top: Any) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "server": {"admin_token": {"value": TOKEN}},
                "debounce": {"after": "50ms", "max": "300ms"},
                "shutdown": {"drain": "0s", "grace": "5s"},
                "registries": registries,
                **top,
            }
        )
    )
    return path


def pair(config: Path) -> tuple[Replica, Replica]:
    """Two replicas of one config, each naming the other as its peer (as the chart's
    headless Service names every replica)."""
    a, b = Replica(config, "a", token=TOKEN), Replica(config, "b", token=TOKEN)
    a.env["MCPSERVER_PEERS"] = f"[127.0.0.1:{b.admin_port}]"
    b.env["MCPSERVER_PEERS"] = f"[127.0.0.1:{a.admin_port}]"
    return a, b


def held(replica: Replica) -> dict[str, Any]:
    """Each registry's `held` entry on /debug/registries ({} when nothing is held)."""
    return {r["name"]: r.get("held", {}) for r in replica.debug("registries")}


def holds(replica: Replica, registry: str) -> bool:
    return bool(held(replica)[registry])


def releases(replica: Replica, registry: str) -> bool:
    return not held(replica)[registry]


@pytest.fixture
def stopped_at_end() -> Iterator[list[Replica]]:
    replicas: list[Replica] = []
    yield replicas
    for replica in replicas:
        replica.stop()


async def test_a_confirm_sent_to_one_replica_ends_the_hold_on_every_replica(
    tmp_path: Path, stopped_at_end: list[Replica]
) -> None:
    static = tmp_path / "services.yaml"
    write_services(static, SIX)
    entry = {"kind": "static", "name": "files", "path": str(static), "poll_interval": "100ms"}
    a, b = pair(write_config(tmp_path / "mcpserver.yaml", [entry]))
    stopped_at_end.extend((a, b))
    for replica in (a, b):
        await asyncio.to_thread(replica.start)
    write_services(static, SIX[:2])  # 20 of 30 instances gone: both replicas hold
    for replica in (a, b):
        await until(functools.partial(holds, replica, "files"), within=30)
    assert len((await served(b.port))["ServiceEntry"]) == 6
    status, answer = await asyncio.to_thread(a.confirm, "files")
    assert status == 200, answer
    assert answer["confirmed"] is True
    assert answer["peers"] == {f"127.0.0.1:{b.admin_port}": "confirmed"}
    for replica in (a, b):
        await until(functools.partial(releases, replica, "files"), within=30)
        assert len((await served(replica.port))["ServiceEntry"]) == 2


async def test_a_lone_replica_killed_during_a_hold_holds_the_same_set_when_started_again(
    tmp_path: Path, stopped_at_end: list[Replica]
) -> None:
    """No peers, a state_dir (the chart's emptyDir survives a container restart): killed
    with SIGKILL while it holds a removal, the replica starts again from its state and
    serves the same resources, byte for byte; alone it would serve the 2 services left."""
    static = tmp_path / "services.yaml"
    write_services(static, SIX)
    entry = {"kind": "static", "name": "files", "path": str(static), "poll_interval": "100ms"}
    state = tmp_path / "state"
    config = write_config(
        tmp_path / "mcpserver.yaml", [entry], state_dir=str(state), state_write_interval="1s"
    )
    lone = Replica(config, "lone", token=TOKEN)
    stopped_at_end.append(lone)
    await asyncio.to_thread(lone.start)
    write_services(static, SIX[:2])
    await until(functools.partial(holds, lone, "files"), within=30)

    def written_with_hold() -> bool:
        body = json.loads((state / "files.json").read_text())
        return body["registries"]["files"].get("hold") is not None

    await until(written_with_hold, within=30)
    before = await served(lone.port)
    assert len(before["ServiceEntry"]) == 6
    await asyncio.to_thread(lone.kill)
    await asyncio.to_thread(lone.start)
    assert await served(lone.port) == before
    assert held(lone)["files"]["origin"] == "state_dir"


class Clients:
    """One Eureka client per instance (its own heartbeat thread): paused, they stop
    renewing; resumed, a renewal answered 404 registers the instance again, one client at a
    time, as clients of a restarted Eureka server come back over their renewal interval."""

    def __init__(self, server: EurekaServer, instances: dict[str, list[str]]) -> None:
        self.beats: list[Heartbeats] = []
        for app, addresses in instances.items():
            for address in addresses:
                heartbeats = Heartbeats(server, 0.3)
                heartbeats.add(app, address)
                self.beats.append(heartbeats)

    def pause(self) -> None:
        for heartbeats in self.beats:
            heartbeats.paused.set()

    def close(self) -> None:
        for heartbeats in self.beats:
            heartbeats.close()


def registered(server: EurekaServer) -> int:
    """Instances the Eureka server lists now."""
    apps = server.apps()["applications"]["application"]
    return sum(len(app["instance"]) for app in apps)


def has_registered(server: EurekaServer, count: int) -> bool:
    return registered(server) == count


def endpoints_in(istiod: Istiod) -> set[str]:
    """Every endpoint address of our ServiceEntries in istiod's store (/debug/configz)."""
    found: set[str] = set()
    for config in istiod.configs().values():
        if config["metadata"]["namespace"] == "eureka":
            found.update(e["address"] for e in config["spec"].get("endpoints", []))
    return found


async def test_a_replica_started_mid_refill_serves_its_peers_set_and_istiod_loses_nothing(
    tmp_path: Path, start_istiod: IstiodFactory, stopped_at_end: list[Replica]
) -> None:
    """A real Eureka server restarts (empty: it keeps its registry in memory) and its
    clients register again one by one. Replica A holds what is missing (the recovery
    grace, then the mass-removal rule); replica B starts mid-refill, takes over A's hold
    and serves A's set byte for byte; istiod, dialing one address, is switched from A to B
    (A killed). Sampled every 100 ms, istiod's store never lacks an endpoint that was live
    before the restart."""
    eureka = EurekaServer(eureka_server_jar(), tmp_path / "eureka")
    eureka.launch()  # on the loop's thread: see EurekaServer.start
    await asyncio.to_thread(eureka.wait_ready)
    instances = {"orders": ["10.60.0.1", "10.60.0.2"], "stock": ["10.60.1.1", "10.60.1.2"]}
    instances["pay"] = ["10.60.2.1", "10.60.2.2"]
    everyone = {a for addresses in instances.values() for a in addresses}
    clients = Clients(eureka, instances)
    forwarder: Forwarder | None = None
    sampling: asyncio.Task[list[set[str]]] | None = None
    try:
        entry = {
            "kind": "eureka",
            "name": "eureka",
            "servers": [eureka.url],
            "apps": list(instances),
            "namespace": "eureka",
            "poll_interval": "300ms",
        }
        protection = {"hold_for": "10m", "recovery_grace": {"eureka": "2m"}}
        config = write_config(tmp_path / "mcpserver.yaml", [entry], protection=protection)
        a, b = pair(config)
        stopped_at_end.extend((a, b))
        await asyncio.to_thread(a.start)
        await until(lambda: registered(eureka) == 6)
        forwarder = Forwarder(a.port)
        await forwarder.start()
        istiod = await start_istiod(forwarder.port)
        await until(lambda: endpoints_in(istiod) == everyone, within=60)

        async def sample() -> list[set[str]]:
            """istiod's endpoints every 100 ms until cancelled."""
            seen: list[set[str]] = []
            with contextlib.suppress(asyncio.CancelledError):
                while True:
                    with contextlib.suppress(OSError, ValueError):
                        seen.append(await asyncio.to_thread(endpoints_in, istiod))
                    await asyncio.sleep(0.1)  # the sampling period
            return seen

        sampling = asyncio.create_task(sample())
        # the restart: the clients do not notice it until their next renewal
        clients.pause()
        await asyncio.to_thread(eureka.stop)
        eureka.launch()
        await asyncio.to_thread(eureka.wait_ready)
        await until(lambda: held(a)["eureka"], within=60)
        # two clients register again; then B starts, mid-refill
        for n, heartbeats in enumerate(clients.beats[:2], 1):
            heartbeats.paused.clear()
            await until(functools.partial(has_registered, eureka, n))
        await asyncio.to_thread(b.start)
        assert held(b)["eureka"]["origin"] == f"peer 127.0.0.1:{a.admin_port}"
        left, right = await served(a.port), await served(b.port)
        assert right == left  # byte for byte (versions, VIPs, creation times)
        # istiod is switched to B, and A dies
        forwarder.point_at(b.port)
        await asyncio.to_thread(a.kill)
        await until(lambda: _acked_everything(b), within=60)
        # the other clients register again, one by one; the hold ends once all are back
        for n, heartbeats in enumerate(clients.beats[2:], 3):
            heartbeats.paused.clear()
            await until(functools.partial(has_registered, eureka, n))
        await until(lambda: not held(b)["eureka"], within=60)
        await until(lambda: endpoints_in(istiod) == everyone, within=30)
        sampling.cancel()
        samples = await sampling
        sampling = None
        missing = [sorted(everyone - seen) for seen in samples if not everyone <= seen]
        assert samples and not missing, missing[:5]
        print(f"\n{len(samples)} samples of istiod's store, none lacking a live endpoint",
              file=sys.stderr)  # fmt: skip
    except AssertionError:
        for replica in stopped_at_end:
            print(tail(replica.log_path), file=sys.stderr)
        raise
    finally:
        if sampling is not None:
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
        clients.close()
        if forwarder is not None:
            with contextlib.suppress(Exception):
                await forwarder.stop()
        await asyncio.to_thread(eureka.stop)
