"""Replicas compare notes (issue 27 D): a replica that starts takes what its peers accepted
as its own reference, so it never serves less than they do and serves the same bytes; a
confirmation sent to one replica reaches its peers; an unreachable or silent peer costs
one log line and at most peers.wait."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mcpserver.app import App
from mcpserver.xds.client import IstiodLikeClient
from tests.component.test_ads import se_url
from tests.conftest import (
    AppFactory,
    ClientFactory,
    admin_get,
    eventually,
    free_port,
    make_settings,
    past_next_rebuild,
    service,
    write_services,
)

pytestmark = pytest.mark.component

TOKEN = "peer-test-token"
SIX = [service(f"s{i}", *(f"10.6.{i}.{j}" for j in range(1, 6))) for i in range(6)]


def files(tmp_path: Path, *names: str) -> list[Path]:
    paths = []
    for name in names:
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "services.yaml")
        write_services(paths[-1], SIX)
    return paths


def settings(path: Path, admin: str = "127.0.0.1:0", **top: Any) -> Any:
    server = {"listen": "127.0.0.1:0", "admin": admin, "admin_token": {"value": TOKEN}}
    return make_settings(path, server=server, **top)


def entries(client: IstiodLikeClient) -> list[bytes]:
    """The ServiceEntry set as istiod would hold it, each resource as bytes."""
    return sorted(r.SerializeToString() for r in client.responses[se_url(client)][-1].resources)


def names(client: IstiodLikeClient) -> set[str]:
    return {r.name for r in client.latest("ServiceEntry")}


async def registries(app: App) -> Any:
    status, body = await admin_get(app.admin.port, "/debug/registries", TOKEN)
    assert status == 200, body
    return json.loads(body)


async def test_a_replica_started_during_a_hold_serves_what_its_peer_serves_and_a_confirm_reaches_both(
    tmp_path: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    a_file, b_file = files(tmp_path, "a", "b")
    a_admin, b_admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    # each names the other, as the chart's headless Service does (B is not up yet)
    a = await start_app(settings(a_file, admin=a_admin, peers=[b_admin]))
    client_a = await connect(a.port)
    await client_a.wait_for(lambda c: len(names(c)) == 6, 10)
    # the registry loses 4 of its 6 services (20 of 30 instances): A holds
    write_services(a_file, SIX[:2])
    await eventually(lambda: a.pipeline.registry_states()[0].hold is not None)
    await past_next_rebuild(a)
    assert len(names(client_a)) == 6
    # B starts now, over the same listing: alone it would serve 2
    write_services(b_file, SIX[:2])
    b_started = time.monotonic()
    b = await start_app(settings(b_file, admin=b_admin, peers=[a_admin]))
    client_b = await connect(b.port)
    await client_b.wait_for(lambda c: c.synced(), 10)
    assert entries(client_b) == entries(client_a)  # byte for byte
    ((a_state,), (b_state,)) = a.pipeline.registry_states(), b.pipeline.registry_states()
    assert a_state.hold is not None and b_state.hold is not None
    # the same start in wall-clock time: both apply it at the same moment
    a_since = time.time() - (time.monotonic() - a_state.hold.since)
    b_since = time.time() - (time.monotonic() - b_state.hold.since)
    assert abs(a_since - b_since) < 0.05
    assert b_state.hold.since < b_started  # A's start, not the moment B took it over
    (entry,) = await registries(b)
    assert entry["held"]["origin"] == f"peer 127.0.0.1:{a.admin.port}"
    assert f"compared with what peer 127.0.0.1:{a.admin.port} accepted" in entry["detail"]
    ((own,),) = [await registries(a)]
    assert own["held"]["origin"] == "own"
    # additions flow on both
    for path in (a_file, b_file):
        write_services(path, [*SIX[:2], service("fresh", "10.7.0.1")])
    for client in (client_a, client_b):
        await client.wait_for(lambda c: "fresh" in names(c), 10)
    assert entries(client_b) == entries(client_a)
    # a confirmation sent to A ends the hold on A and on B
    headers = {"Authorization": f"Bearer {TOKEN}"}
    url = f"http://127.0.0.1:{a.admin.port}/debug/registries/files/confirm"
    async with aiohttp.ClientSession() as http, http.post(url, headers=headers) as reply:
        assert reply.status == 200
        body = await reply.json()
    assert body["confirmed"] is True
    assert body["peers"] == {f"127.0.0.1:{b.admin.port}": "confirmed"}
    for client in (client_a, client_b):
        await client.wait_for(lambda c: names(c) == {"s0", "s1", "fresh"}, 10)
    assert entries(client_b) == entries(client_a)


@pytest.fixture
async def silent_peer() -> AsyncIterator[int]:
    """A port that accepts connections and never answers (a peer hung mid-start)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()


async def test_unreachable_and_silent_peers_cost_a_log_line_and_at_most_the_wait(
    tmp_path: Path,
    start_app: AppFactory,
    connect: ClientFactory,
    silent_peer: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (path,) = files(tmp_path, "b")
    closed = f"127.0.0.1:{silent_peer + 1 if silent_peer < 65535 else silent_peer - 1}"
    peers = {"addresses": [closed, f"127.0.0.1:{silent_peer}", "no-such-host.invalid:1"]}
    caplog.set_level(logging.INFO, "mcpserver.peers")
    began = time.monotonic()
    app = await start_app(settings(path, peers={**peers, "wait": "1s"}))
    client = await connect(app.port)
    await client.wait_for(lambda c: len(names(c)) == 6, 10)
    waited = time.monotonic() - began
    assert 0.9 < waited < 4, waited
    lines = [r.getMessage() for r in caplog.records if r.name == "mcpserver.peers"]
    assert len([line for line in lines if "skipped" in line]) == 3, lines
    assert any("no-such-host.invalid" in line for line in lines)
    assert app.pipeline.registry_states()[0].hold is None


async def test_accepted_needs_the_token_and_a_replica_ignores_its_own_confirmation(
    tmp_path: Path, start_app: AppFactory
) -> None:
    (path,) = files(tmp_path, "a")
    app = await start_app(settings(path))
    await eventually(lambda: app.store.snapshot is not None)
    status, _ = await admin_get(app.admin.port, "/debug/accepted")
    assert status == 401
    status, body = await admin_get(app.admin.port, "/debug/accepted", TOKEN)
    document = json.loads(body)
    assert status == 200 and document["primed"] is True and document["replica"] == app.replica
    assert len(document["registries"]["files"]["services"]) == 6
    # a confirmation that comes back to its sender does nothing
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Mcpserver-Forwarded-By": app.replica}
    url = f"http://127.0.0.1:{app.admin.port}/debug/registries/files/confirm"
    async with aiohttp.ClientSession() as http, http.post(url, headers=headers) as reply:
        assert reply.status == 200 and (await reply.json()) == {"self": True}
