"""The Consul watcher's blocking-query loop against an in-memory Consul: index handling,
the per-call cut, error backoff and recovery, ACL-filtered answers, and restart of a crashed
per-service loop. (tests/integration/test_consul.py covers the same against a real agent.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

import mcpserver.registry.base
import mcpserver.registry.consul.client
import mcpserver.registry.consul.watcher
from mcpserver.metrics import Metrics
from mcpserver.registry.consul.client import FILTERED, INDEX, KNOWN_LEADER, HTTPResponse
from mcpserver.registry.consul.config import ConsulRegistrySettings
from mcpserver.registry.consul.parser import parse_health
from mcpserver.registry.consul.watcher import ConsulRegistry
from mcpserver.registry.view import Status
from tests.conftest import eventually

pytestmark = pytest.mark.unit

T = TypeVar("T")


@dataclass(frozen=True)
class Response:
    code: int
    headers: Mapping[str, str]
    body: str


def entry(address: str, name: str = "web") -> dict[str, Any]:
    return {
        "Node": {"Node": "n1", "Address": "192.0.2.9", "Datacenter": "dc1"},
        "Service": {"ID": f"{name}-{address}", "Service": name, "Address": address, "Port": 80},
        "Checks": [{"Status": "passing"}],
    }


@dataclass
class FakeConsul:
    """Consul's blocking-query contract in memory: a query whose index is current waits
    for a change (or `wait`); every answer carries X-Consul-Index. Also a py-consul client
    as far as ConsulClient goes (`http` is itself)."""

    services: dict[str, list[str]] = field(default_factory=dict)  # address per service
    index: int = 10
    filtered: set[str] = field(default_factory=set)  # paths answered as filtered
    failing: int = 0  # the next calls answer 500
    hang: bool = False  # calls never answer (a dead connection)
    # A restarted server: "empty" while it restores (index 1, nothing, no known leader),
    # "stale" once a leader is elected but its log not yet applied (`stale` at `stale_index`);
    # meanwhile it refuses consistent reads.
    restart: str = ""
    stale: dict[str, list[str]] = field(default_factory=dict)
    stale_index: int = 0
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def http(self) -> FakeConsul:
        return self

    def prepare_headers(self, token: str | None = None) -> dict[str, str]:
        return {}

    async def close(self) -> None:
        pass

    def change(self, index: int | None = None, **services: list[str]) -> None:
        self.services.update(services)
        self.index = self.index + 1 if index is None else index
        self._changed.set()
        self._changed = asyncio.Event()

    def remove(self, name: str) -> None:
        del self.services[name]
        self.change()

    async def get(
        self,
        callback: Callable[[HTTPResponse], T],
        path: str,
        params: Sequence[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> T:
        query = dict(params or [])
        self.calls.append((path, query))
        await asyncio.sleep(0)  # a real call always yields; a loop that spins must not hang
        if self.hang:
            await asyncio.Event().wait()
        if self.failing:
            self.failing -= 1
            return callback(Response(500, {}, "rpc error: no leader"))
        if self.restart and "consistent" in query:
            return callback(Response(500, {}, "Not ready to serve consistent reads"))
        if int(query.get("index", "0")) >= self.state()[0]:
            wait = float(query["wait"].rstrip("s"))
            changed = self._changed
            try:
                async with asyncio.timeout(wait):
                    await changed.wait()
            except TimeoutError:
                pass
        name = path.rpartition("/")[2]
        index, services, leader = self.state()
        body: Any
        if path == "/v1/catalog/services":
            body = {n: [] for n in services}
        else:
            body = [entry(a, name) for a in services.get(name, [])]
        if path in self.filtered:
            body = {} if isinstance(body, dict) else []
        headers_out = {INDEX: str(index), KNOWN_LEADER: str(leader).lower()}
        if path in self.filtered:
            headers_out[FILTERED] = "true"
        return callback(Response(200, headers_out, json.dumps(body)))

    def state(self) -> tuple[int, dict[str, list[str]], bool]:
        """What a read sees: index, services, whether there is a known leader."""
        if self.restart == "empty":
            return 1, {}, False
        if self.restart == "stale":
            return self.stale_index, self.stale, True
        return self.index, self.services, True

    def restarted(self, phase: str) -> None:
        """Move the restart on to `phase` ("" when done), waking blocking queries."""
        self.restart = phase
        self.change(self.index if phase else None)


@pytest.fixture
def fast_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor restarts a crashed task at once (its real backoff starts at 0.5 s)."""
    monkeypatch.setattr(mcpserver.registry.base, "backoff", lambda attempt, **_: 0.01)


@pytest.fixture
async def fake() -> FakeConsul:
    return FakeConsul(services={"web": ["10.0.0.1"]})


@pytest.fixture
async def registry(fake: FakeConsul) -> AsyncIterator[ConsulRegistry]:
    settings = ConsulRegistrySettings(kind="consul", name="consul", wait=1.0, datacenters=["dc1"])
    registry = ConsulRegistry(settings, Metrics(), {}, client=fake)
    await registry.start(lambda: None)
    yield registry
    await registry.stop()


def addresses(registry: ConsulRegistry) -> list[str]:
    return sorted(i.address for s in registry.view().services for i in s.instances)


def errors(registry: ConsulRegistry, kind: str) -> float:
    value = registry._metrics.registry.get_sample_value(
        "mcpserver_registry_errors_total", {"registry": "consul", "kind": kind}
    )
    return value or 0.0


async def test_follows_changes_with_blocking_queries(
    fake: FakeConsul, registry: ConsulRegistry
) -> None:
    await eventually(lambda: addresses(registry) == ["10.0.0.1"])
    assert registry.view().status is Status.READY
    fake.change(web=["10.0.0.1", "10.0.0.2"])
    await eventually(lambda: addresses(registry) == ["10.0.0.1", "10.0.0.2"])
    health = [q for p, q in fake.calls if p == "/v1/health/service/web"]
    assert "index" not in health[0]  # a first query lists
    assert health[-1]["index"] == str(fake.index)  # then each one blocks on the last index
    assert all(q["dc"] == "dc1" and q["wait"] == "1s" for q in health)


async def test_an_index_that_goes_backwards_relists(
    fake: FakeConsul, registry: ConsulRegistry
) -> None:
    await eventually(lambda: addresses(registry) == ["10.0.0.1"])
    fake.change(index=3, web=["10.0.0.3"])  # a Consul that lost its state

    def indexes() -> list[str | None]:
        return [q.get("index") for p, q in fake.calls if p == "/v1/health/service/web"]

    await eventually(lambda: addresses(registry) == ["10.0.0.3"])
    await eventually(lambda: "3" in indexes())
    calls = indexes()
    reset = calls.index(None, 1)
    # blocking on 10, an answer with index 3: a full re-list (no index), then blocking on 3
    assert calls[reset - 1 : reset + 2] == ["10", None, "3"]


async def test_errors_back_off_degrade_and_recovery_clears_them(
    fake: FakeConsul, registry: ConsulRegistry
) -> None:
    await eventually(lambda: addresses(registry) == ["10.0.0.1"])
    fake.failing = 3  # the next three calls, once the current long polls end
    await eventually(lambda: registry.view().status is Status.DEGRADED, within=5)
    assert "HTTP 500: rpc error: no leader" in registry.view().detail
    assert addresses(registry) == ["10.0.0.1"]  # the last view stays served
    fake.change(web=["10.0.0.2"])
    await eventually(lambda: addresses(registry) == ["10.0.0.2"], within=15)
    await eventually(lambda: registry.view().status is Status.READY)
    assert registry.view().detail == ""
    assert errors(registry, "error") == 3


async def test_a_hanging_call_is_cut_counted_and_retried(
    fake: FakeConsul, registry: ConsulRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mcpserver.registry.consul.client, "TIMEOUT_MARGIN", 0.0)
    await eventually(lambda: addresses(registry) == ["10.0.0.1"])
    fake.hang = True
    fake.change(web=["10.0.0.2"])  # the queries in flight answer; the next ones hang
    await eventually(lambda: registry.timeouts >= 1, within=10)
    assert errors(registry, "timeout") >= 1
    assert errors(registry, "error") == 0  # a cut call is a timeout, counted once
    assert registry.view().status is Status.DEGRADED
    fake.hang = False
    fake.change(web=["10.0.0.3"])
    await eventually(lambda: addresses(registry) == ["10.0.0.3"], within=15)
    await eventually(lambda: registry.view().status is Status.READY, within=15)


async def test_acl_filtered_answers_degrade_but_flow_and_recover(
    fake: FakeConsul, registry: ConsulRegistry
) -> None:
    await eventually(lambda: addresses(registry) == ["10.0.0.1"])
    fake.filtered.add("/v1/catalog/services")
    fake.change()
    await eventually(lambda: registry.view().status is Status.DEGRADED)
    assert FILTERED in registry.view().detail
    assert "service list in dc1" in registry.view().detail
    assert "what it cannot read looks deleted" in registry.view().detail
    assert errors(registry, "acl-filtered") >= 1
    # the data flows: the pipeline's protection decides about the removal
    await eventually(lambda: registry.view().services == ())
    fake.filtered.clear()
    fake.change()  # an unfiltered answer recovers
    await eventually(lambda: registry.view().status is Status.READY)
    await eventually(lambda: addresses(registry) == ["10.0.0.1"])


async def test_filtering_that_leaves_the_index_alone_is_still_seen(
    fake: FakeConsul, registry: ConsulRegistry
) -> None:
    """An ACL policy change alters what the token sees without moving Consul's index."""
    await eventually(lambda: addresses(registry) == ["10.0.0.1"])
    fake.filtered.add("/v1/health/service/web")
    await eventually(lambda: registry.view().status is Status.DEGRADED, within=5)
    assert "service 'web' in dc1" in registry.view().detail
    await eventually(lambda: registry.view().services == (), within=5)
    fake.filtered.clear()
    await eventually(lambda: registry.view().status is Status.READY, within=5)
    await eventually(lambda: addresses(registry) == ["10.0.0.1"], within=5)


async def test_a_crashed_service_loop_is_restarted_and_keeps_following(
    fake: FakeConsul,
    registry: ConsulRegistry,
    fast_restarts: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.change(api=["10.0.1.1"])
    await eventually(lambda: addresses(registry) == ["10.0.0.1", "10.0.1.1"])
    real = parse_health
    crashes: list[str] = []

    def parse_once_broken(name: str, *args: Any) -> Any:
        if name == "web" and not crashes:
            crashes.append(name)
            raise RuntimeError("a bug in the parser")
        return real(name, *args)

    monkeypatch.setattr(mcpserver.registry.consul.watcher, "parse_health", parse_once_broken)
    fake.change(web=["10.0.0.2"])
    await eventually(lambda: crashes)
    assert errors(registry, "crash") == 1
    # restarted: it re-lists and follows Consul again, and the registry recovers
    await eventually(lambda: addresses(registry) == ["10.0.0.2", "10.0.1.1"])
    await eventually(lambda: registry.view().status is Status.READY)
    assert registry.restarts == 1
    fake.change(web=["10.0.0.3"])
    await eventually(lambda: addresses(registry) == ["10.0.0.3", "10.0.1.1"])


async def test_a_crash_keeps_the_registry_degraded_until_that_loop_answers(
    fake: FakeConsul,
    registry: ConsulRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Other loops answering do not hide a crashed one that is waiting to restart."""
    monkeypatch.setattr(mcpserver.registry.base, "backoff", lambda attempt, **_: 3.0)
    fake.change(api=["10.0.1.1"])
    await eventually(lambda: addresses(registry) == ["10.0.0.1", "10.0.1.1"])
    real = parse_health

    def web_broken(name: str, *args: Any) -> Any:
        if name == "web":
            raise RuntimeError("a bug in the parser")
        return real(name, *args)

    monkeypatch.setattr(mcpserver.registry.consul.watcher, "parse_health", web_broken)
    fake.change(web=["10.0.0.2"])
    await eventually(lambda: registry.view().status is Status.DEGRADED)
    fake.change(api=["10.0.1.2"])  # the api loop answers meanwhile
    await eventually(lambda: addresses(registry) == ["10.0.0.1", "10.0.1.2"])
    assert registry.view().status is Status.DEGRADED
    monkeypatch.setattr(mcpserver.registry.consul.watcher, "parse_health", real)
    await eventually(lambda: registry.view().status is Status.READY, within=10)
    assert addresses(registry) == ["10.0.0.2", "10.0.1.2"]


async def test_a_removed_service_takes_its_trouble_with_it(
    fake: FakeConsul, registry: ConsulRegistry
) -> None:
    fake.change(api=["10.0.1.1"])
    await eventually(lambda: addresses(registry) == ["10.0.0.1", "10.0.1.1"])
    fake.filtered.add("/v1/health/service/api")
    await eventually(lambda: registry.view().status is Status.DEGRADED, within=5)
    fake.remove("api")
    await eventually(lambda: registry.view().status is Status.READY)
    assert addresses(registry) == ["10.0.0.1"]
    # nothing of it is kept either: a registry whose services come and go must not grow
    assert all("api" not in table for table in (registry._dcs, registry.table.parts()))


@pytest.mark.parametrize(
    ("asked", "answered", "known_leader", "ignored"),
    [
        (17, 1, False, True),  # a blocking query woken by a restarting server's restore
        (17, 1, True, True),  # the index went back: not applied, asked again from 0
        (17, 17, False, False),  # a blocking query timing out says "no known leader" too
        (24, 25, False, False),  # a real change, answered without a known leader
        (0, 1, False, True),  # a first read of a server with no leader yet
        (0, 17, True, False),  # a first read of a healthy server
        (0, 0, True, False),  # an answer without an index at all
    ],
)
def test_answers_of_a_restoring_consul_are_not_applied(
    asked: int, answered: int, known_leader: bool, ignored: bool
) -> None:
    """A restarted Consul server answers blocking queries with index 1 and an empty list
    while it restores its state; applying that withdrew live services (the fault suite's
    Consul restart). The decision table of `restoring`."""
    reply = mcpserver.registry.consul.client.Reply(answered, False, b"", [], known_leader)
    assert mcpserver.registry.consul.watcher.restoring(asked, reply) is ignored


async def test_a_restarted_server_is_read_consistently_before_it_is_believed(
    fake: FakeConsul, registry: ConsulRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a Consul server restart, a default read can answer an older state (a leader
    elected, its log not yet applied: CI saw index 20 after 22, a live instance missing).
    The re-list after a restart is a consistent read, which Consul refuses until it can
    answer truly: no view without the live instance is ever published."""
    fake.change(web=["10.0.0.1", "10.0.0.2"])
    await eventually(lambda: addresses(registry) == ["10.0.0.1", "10.0.0.2"])
    published: list[list[str]] = []
    publish = registry.publish

    def record(*args: Any, **kwargs: Any) -> None:
        publish(*args, **kwargs)
        published.append(addresses(registry))

    monkeypatch.setattr(registry, "publish", record)

    def asked() -> int:
        return sum(p == "/v1/health/service/web" for p, _ in fake.calls)

    fake.stale, fake.stale_index = {"web": ["10.0.0.1"]}, fake.index - 1
    before = asked()
    fake.restarted("empty")  # blocking queries woken by the restore: index 1, nothing
    await eventually(lambda: asked() >= before + 2, within=10)
    fake.restarted("stale")  # a leader, its log not yet applied
    before = asked()
    await eventually(lambda: asked() >= before + 2, within=15)
    fake.restarted("")
    await eventually(lambda: registry.view().status is Status.READY, within=15)
    await eventually(lambda: fake.calls[-1][1].get("index") == str(fake.index), within=10)
    assert addresses(registry) == ["10.0.0.1", "10.0.0.2"]
    assert all(view == ["10.0.0.1", "10.0.0.2"] for view in published), published
