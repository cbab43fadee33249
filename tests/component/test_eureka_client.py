"""The Eureka client's failover rules and the watcher's answer to a refused delta, against
small loopback HTTP servers that answer as we tell them (what a real Eureka server will not
do on demand: a 503, a 401 from one peer only, `disable-delta`'s 403)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from mcpserver.metrics import Metrics
from mcpserver.registry.eureka.client import (
    EurekaClient,
    EurekaHTTPError,
    EurekaUnavailableError,
)
from mcpserver.registry.eureka.config import EurekaRegistrySettings
from mcpserver.registry.eureka.watcher import EurekaRegistry
from mcpserver.registry.view import Status
from tests.conftest import eventually

pytestmark = pytest.mark.component

APPS = {
    "applications": {
        "apps__hashcode": "UP_1_",
        "application": [
            {
                "name": "ORDERS",
                "instance": [
                    {
                        "instanceId": "one",
                        "app": "ORDERS",
                        "ipAddr": "10.0.0.1",
                        "status": "UP",
                        "port": {"$": 8080, "@enabled": "true"},
                    }
                ],
            }
        ],
    }
}

Answer = Callable[[str], tuple[int, Any]]  # path -> (status, JSON body)


class Fake:
    """One loopback HTTP server; `answer` decides each reply; `asked` records each path and
    its Authorization header."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.asked: list[tuple[str, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/eureka/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/eureka"

    async def _handle(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        self.asked.append((path, request.headers.get("Authorization", "")))
        status, body = self.answer(path)
        return web.json_response(body, status=status)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def fakes() -> AsyncIterator[Callable[[Answer], Awaitable[Fake]]]:
    made: list[Fake] = []

    async def make(answer: Answer) -> Fake:
        fake = Fake(answer)
        await fake.start()
        made.append(fake)
        return fake

    yield make
    for fake in made:
        await fake.stop()


async def test_a_failing_server_is_left_for_the_next_and_the_next_is_kept(
    fakes: Callable[[Answer], Awaitable[Fake]],
) -> None:
    down = await fakes(lambda path: (503, {"error": "busy"}))
    up = await fakes(lambda path: (200, APPS))
    client = EurekaClient([down.url, up.url], credentials=("user", "pw"))
    try:
        assert await client.get("/apps") == APPS
        assert (client.server, client.failovers) == (up.url, 1)
        await client.get("/apps/delta")
        assert len(down.asked) == 1  # kept to the server that answered
        assert up.asked[0] == ("/apps", "Basic dXNlcjpwdw==")  # sent up front
        # nobody answers: one error naming each server
        up.answer = lambda path: (500, {"error": "boom"})
        with pytest.raises(EurekaUnavailableError) as err:
            await client.get("/apps/delta")
        assert down.url in str(err.value) and up.url in str(err.value)
    finally:
        await client.close()


async def test_a_refusal_is_that_servers_answer_not_a_reason_to_move(
    fakes: Callable[[Answer], Awaitable[Fake]],
) -> None:
    refusing = await fakes(lambda path: (401, {"error": "Unauthorized"}))
    other = await fakes(lambda path: (200, APPS))
    client = EurekaClient([refusing.url, other.url])
    try:
        with pytest.raises(EurekaHTTPError) as err:
            await client.get("/apps")
        assert err.value.code == 401
        assert other.asked == [] and client.failovers == 0
    finally:
        await client.close()


async def test_a_refused_delta_means_fetching_everything_every_round(
    fakes: Callable[[Answer], Awaitable[Fake]],
) -> None:
    """`eureka.server.disable-delta=true`: Eureka answers /apps/delta with 403, and its Java
    client then fetches /apps whole; so do we, and the registry stays ready."""
    server = await fakes(lambda path: (403, {}) if path == "/apps/delta" else (200, APPS))
    settings = EurekaRegistrySettings.model_validate(
        {"kind": "eureka", "name": "eu", "servers": [server.url], "poll_interval": "50ms"}
    )
    registry = EurekaRegistry(settings, Metrics(), {})
    await registry.start(lambda: None)
    try:
        await eventually(lambda: registry.full_fetches >= 3, within=10)
        view = registry.view()
        assert view.status is Status.READY
        assert [s.hosts for s in view.services] == [("orders.eureka",)]
        assert registry.delta_fetches == 0
    finally:
        await registry.stop()


def instance(app: str, ip: str, status: str = "UP", action: str = "ADDED") -> dict[str, Any]:
    return {
        "instanceId": f"{app}-{ip}",
        "app": app,
        "ipAddr": ip,
        "status": status,
        "port": {"$": 8080, "@enabled": "true"},
        "actionType": action,
    }


def apps_document(hashcode: str, *instances: Any) -> dict[str, Any]:
    by_app: dict[str, list[Any]] = {}
    for one in instances:
        by_app.setdefault(one["app"] if isinstance(one, dict) else "BAD", []).append(one)
    return {
        "applications": {
            "apps__hashcode": hashcode,
            "application": [{"name": a, "instance": i} for a, i in by_app.items()],
        }
    }


async def test_apps_a_delta_did_not_change_keep_their_service_objects(
    fakes: Callable[[Answer], Awaitable[Fake]],
) -> None:
    """An app the delta did not touch keeps its very Service objects (the pipeline then
    reuses their work), and a record that cannot be read, repeated by every delta of the
    server's window, is one problem."""
    state: dict[str, Any] = {
        "/apps": apps_document(
            "UP_2_", instance("ORDERS", "10.0.0.1"), instance("PAY", "10.0.0.2")
        ),
        "/apps/delta": apps_document("UP_2_"),
    }
    server = await fakes(lambda path: (200, state[path]))
    settings = EurekaRegistrySettings.model_validate(
        {"kind": "eureka", "name": "eu", "servers": [server.url], "poll_interval": "50ms"}
    )
    registry = EurekaRegistry(settings, Metrics(), {})
    await registry.start(lambda: None)
    try:
        await eventually(lambda: len(registry.view().services) == 2, within=10)
        pay = next(s for s in registry.view().services if s.name == "pay.eureka")
        state["/apps/delta"] = apps_document(
            "UP_3_", instance("ORDERS", "10.0.0.3"), "not an instance"
        )

        def orders() -> list[str]:
            service = next(s for s in registry.view().services if s.name == "orders.eureka")
            return [i.address for i in service.instances]

        await eventually(lambda: orders() == ["10.0.0.1", "10.0.0.3"], within=10)
        deltas = registry.delta_fetches
        await eventually(lambda: registry.delta_fetches >= deltas + 3, within=10)
        assert next(s for s in registry.view().services if s.name == "pay.eureka") is pay
        assert [p.reason for p in registry.view().problems] == ["bad-json"]
        assert (registry.full_fetches, registry.mismatches) == (1, 0)
    finally:
        await registry.stop()


async def test_a_change_the_hash_cannot_see_is_caught_by_the_resync(
    fakes: Callable[[Answer], Awaitable[Fake]],
) -> None:
    """Eureka's hash counts statuses only: an instance that moved to another address, its
    delta missed, hashes the same. The periodic full fetch brings it."""
    state: dict[str, Any] = {
        "/apps": apps_document("UP_1_", instance("ORDERS", "10.0.0.1")),
        "/apps/delta": apps_document("UP_1_"),
    }
    server = await fakes(lambda path: (200, state[path]))
    settings = EurekaRegistrySettings.model_validate(
        {
            "kind": "eureka",
            "name": "eu",
            "servers": [server.url],
            "poll_interval": "50ms",
            "resync_interval": "500ms",
        }
    )
    registry = EurekaRegistry(settings, Metrics(), {})
    await registry.start(lambda: None)
    try:
        await eventually(lambda: len(registry.view().services) == 1, within=10)
        moved = instance("ORDERS", "10.0.0.9")
        moved["instanceId"] = "ORDERS-10.0.0.1"  # the same instance, elsewhere
        state["/apps"] = apps_document("UP_1_", moved)

        def addresses() -> list[str]:
            return [i.address for s in registry.view().services for i in s.instances]

        await eventually(lambda: addresses() == ["10.0.0.9"], within=10)
        assert registry.mismatches == 0 and registry.delta_fetches > 0
    finally:
        await registry.stop()


async def test_a_stale_delta_after_a_restart_is_caught_by_a_full_fetch(
    fakes: Callable[[Answer], Awaitable[Fake]],
) -> None:
    """A restarted Eureka is refilled by a burst of registrations, and a delta read that
    raced the burst's last one can stay in its response cache (up to 180 s): it lacks that
    instance, and its hash agrees with what it lists. After the server came back, a delta
    that changed something is checked by a full fetch (another cache entry) in the next
    round, so the instance is not missing for minutes (nor withdrawn when protection's
    recovery grace ends). Found in test_faults' Eureka restart under load."""
    two = (instance("ORDERS", "10.0.0.1"), instance("ORDERS", "10.0.0.2"))
    state: dict[str, Any] = {
        "down": False,
        "/apps": apps_document("UP_2_", *two),
        "/apps/delta": apps_document("UP_2_"),
    }

    def answer(path: str) -> tuple[int, Any]:
        return (503, {"error": "restarting"}) if state["down"] else (200, state[path])

    server = await fakes(answer)
    settings = EurekaRegistrySettings.model_validate(
        {"kind": "eureka", "name": "eu", "servers": [server.url], "poll_interval": "50ms"}
    )
    registry = EurekaRegistry(settings, Metrics(), {})

    def addresses() -> list[str]:
        return sorted(i.address for s in registry.view().services for i in s.instances)

    await registry.start(lambda: None)
    try:
        await eventually(lambda: addresses() == ["10.0.0.1", "10.0.0.2"], within=10)
        state["down"] = True
        await eventually(lambda: registry.view().status is Status.DEGRADED, within=10)
        # restarted, empty
        state.update({"/apps": apps_document(""), "/apps/delta": apps_document("")})
        state["down"] = False
        await eventually(lambda: registry.view().recovered is not None, within=10)
        await eventually(lambda: addresses() == [], within=10)
        # both registered again; the cached delta is from between the two registrations
        state["/apps"] = apps_document("UP_2_", *two)
        state["/apps/delta"] = apps_document("UP_1_", two[0])
        await eventually(lambda: addresses() == ["10.0.0.1", "10.0.0.2"], within=10)
        deltas = registry.delta_fetches
        await eventually(lambda: registry.delta_fetches >= deltas + 3, within=10)
        assert addresses() == ["10.0.0.1", "10.0.0.2"]  # the stale delta takes nothing back
        assert registry.view().status is Status.READY
    finally:
        await registry.stop()
