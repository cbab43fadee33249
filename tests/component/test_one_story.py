"""Every surface tells the same story (issue 27): while one registry's file is broken and
another's removal is held, the status page headline, its problem count, /debug/problems,
/debug/registries and /metrics all say so; each way a hold ends has its own log line; a
degraded registry's new reason is logged once; the wait for the first snapshot is said at
most every 30 s; a stream the server ends is logged as ended by the server, with why."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import aiohttp
import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2

import mcpserver.pipeline
from mcpserver.app import App
from mcpserver.registry.view import Status
from mcpserver.xds.client import ADS_METHOD
from tests.component.test_ads import ControlledRegistry, static_registry, svc
from tests.conftest import (
    AppFactory,
    ClientFactory,
    admin_get,
    eventually,
    make_settings,
    past_next_rebuild,
    service,
    settings_for,
    static_entry,
    write_services,
)

pytestmark = pytest.mark.component

SE = "networking.istio.io/v1/ServiceEntry"
BAD_PORT = [{"name": "bad_name", "number": 8080, "protocol": "HTTP"}]  # Istio rejects it


def sample(app: App, name: str, **labels: str) -> float | None:
    return app.metrics.registry.get_sample_value(name, labels)


def status_of(app: App, registry: str) -> dict[str, float | None]:
    """mcpserver_registry_status of one registry, by status."""
    return {
        s.value: sample(app, "mcpserver_registry_status", registry=registry, status=s.value)
        for s in Status
    }


def served(app: App, registry: str) -> float | None:
    return sample(app, "mcpserver_registry_services", registry=registry)


def write_text(path: Path, text: str) -> None:
    """Replace a file atomically: a poll never sees it half written (empty)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def warnings(caplog: pytest.LogCaptureFixture, logger: str, start: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == logger and r.levelno == logging.WARNING and r.getMessage().startswith(start)
    ]


def hold_ends(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every line that says a hold ended, whichever way."""
    return warnings(caplog, "mcpserver.pipeline", "held removal")


async def page(app: App) -> str:
    status, html = await admin_get(app.admin.port, "/?refresh=0")
    assert status == 200
    return html


def headline(html: str) -> str:
    """The page's title, which carries its headline as text."""
    found = re.search(r"<title>(.*)</title>", html)
    assert found, html
    return found.group(1)


def problem_count(html: str) -> int:
    found = re.search(r'<h2 id="problems-heading">Problems \((\d+)\)</h2>', html)
    assert found, html
    return int(found.group(1))


async def test_a_broken_file_and_a_held_removal_show_alike_on_every_surface(
    tmp_path: Path,
    start_app: AppFactory,
    connect: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mcpserver")
    files, legacy, catalog = (tmp_path / f"{n}.yaml" for n in ("files", "legacy", "catalog"))
    write_services(files, [service("cart", "10.1.0.1", "10.1.0.2"), service("pay", "10.1.0.9")])
    write_services(legacy, [service("billing", "10.2.0.1", namespace="legacy")])
    write_services(
        catalog,
        [
            service("catalog", *(f"10.3.0.{i}" for i in range(1, 7))),
            service("search", "10.3.1.1"),
            service("broken", "10.3.2.1", ports=BAD_PORT),  # listed, withheld: not served
        ],
    )
    settings = settings_for(tmp_path, *(static_entry(f) for f in (files, legacy, catalog)))
    app = await start_app(settings)
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced(), 10)
    assert [served(app, r) for r in ("files", "legacy", "catalog")] == [2, 1, 2]
    assert headline(await page(app)) == "mcpserver ready"

    # one file breaks, another registry loses everything at once
    write_text(legacy, "services: [\n")
    write_services(catalog, [])

    def states() -> dict[str, tuple[str, bool]]:
        return {
            s.view.registry: (s.view.status.value, s.hold is not None)
            for s in app.pipeline.registry_states()
        }

    await eventually(
        lambda: (
            states()
            == {
                "files": ("ready", False),
                "legacy": ("degraded", False),
                "catalog": ("ready", True),
            }
        )
    )
    await past_next_rebuild(app)
    html = await page(app)
    assert headline(html) == "mcpserver ready, 2 registries degraded"
    readiness = re.search(r'<span id="readiness">(.*?)</span></h1>', html)
    assert readiness and "2 registries degraded" in readiness.group(1)
    # a degraded registry is a problem; a held one is one problem ("removal held"), not two
    expected = [
        {"registry": "legacy", "subject": "registry degraded"},
        {"registry": "catalog", "subject": "ServiceEntry shop/broken"},  # still the held view's
        {"registry": "catalog", "subject": "removal held"},
    ]
    assert problem_count(html) == len(expected)
    _, body = await admin_get(app.admin.port, "/debug/problems")
    problems = json.loads(body)
    assert [{k: p[k] for k in ("registry", "subject")} for p in problems] == expected
    assert "not valid YAML" in problems[0]["message"]
    for problem in problems:
        assert html.count(f"<td>{problem['subject']}</td>") >= 1
    _, body = await admin_get(app.admin.port, "/debug/registries")
    assert {r["name"]: r["status"] for r in json.loads(body)} == {
        "files": "ready",
        "legacy": "degraded",
        "catalog": "degraded",
    }
    # /metrics: the held registry is degraded and serves what it served (not 0, not the
    # withheld entry); the broken one keeps its last view
    assert status_of(app, "catalog") == {"starting": 0, "ready": 0, "degraded": 1}
    assert status_of(app, "legacy") == {"starting": 0, "ready": 0, "degraded": 1}
    assert status_of(app, "files") == {"starting": 0, "ready": 1, "degraded": 0}
    assert [served(app, r) for r in ("files", "legacy", "catalog")] == [2, 1, 2]
    assert sorted(r.name for r in client.latest("ServiceEntry")) == [
        "billing",
        "cart",
        "catalog",
        "pay",
        "search",
    ]
    # the registry row counts what is served, and what the registry itself lists beside it
    row = re.search(r'<tr id="registry-catalog".*?</tr>', html)
    assert row and "2 <span" in row.group(0) and "(lists 0)" in row.group(0)
    assert hold_ends(caplog) == []

    # an operator confirms: one line says so when the removal is applied, and every
    # surface goes back to one degraded registry
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{app.admin.port}/debug/registries/catalog/confirm"
        async with http.post(url) as response:
            assert response.status == 200
    await eventually(lambda: served(app, "catalog") == 0)
    assert status_of(app, "catalog") == {"starting": 0, "ready": 1, "degraded": 0}
    (line,) = hold_ends(caplog)
    assert line.startswith("held removal confirmed by an operator registry=catalog after ")
    # (how many: protection's count, which issue 27 changes for withheld entries)
    assert re.search(
        r": \d+ of \d+ instances \(\d+ services gone\) are withdrawn from istiod$", line
    )
    html = await page(app)
    assert headline(html) == "mcpserver ready, 1 registry degraded"
    assert problem_count(html) == 1  # legacy's; the withheld entry left with the listing

    write_services(legacy, [service("billing", "10.2.0.1", namespace="legacy")])
    await eventually(lambda: status_of(app, "legacy")["ready"] == 1)
    html = await page(app)
    assert headline(html) == "mcpserver ready"
    assert problem_count(html) == 0


@pytest.mark.parametrize("how", ["applied", "cancelled"])
async def test_a_hold_that_ends_by_time_or_by_recovery_says_which(
    static_file: Path,
    start_app: AppFactory,
    connect: ClientFactory,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    caplog.set_level(logging.INFO, logger="mcpserver")
    hold_for = "1s" if how == "applied" else "1h"
    app = await start_app(make_settings(static_file, protection={"hold_for": hold_for}))
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced(), 10)
    write_services(static_file, [])
    await eventually(lambda: status_of(app, "files")["degraded"] == 1)
    assert served(app, "files") == 2  # held: still served
    assert hold_ends(caplog) == []
    if how == "cancelled":
        write_services(
            static_file, [service("cart", "10.1.0.1", "10.1.0.2"), service("pay", "10.1.0.9")]
        )
    await eventually(lambda: status_of(app, "files")["ready"] == 1, within=10)
    await past_next_rebuild(app)
    (line,) = hold_ends(caplog)
    if how == "applied":
        assert line.startswith("held removal applied after 1s registry=files: ")
        assert "3 of 3 instances (2 services gone) are withdrawn" in line
        assert served(app, "files") == 0
    else:
        assert line.startswith("held removal cancelled registry=files after ")
        assert "the registry came back" in line
        assert served(app, "files") == 2
    assert status_of(app, "files") == {"starting": 0, "ready": 1, "degraded": 0}


async def test_a_confirmation_waits_for_a_complete_listing_instead_of_being_lost(
    static_file: Path, start_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Confirmed while the registry re-lists (its view is incomplete): applied at its next
    complete listing, not dropped with the incomplete one."""
    caplog.set_level(logging.INFO, logger="mcpserver")
    controlled = ControlledRegistry("slow")
    app = await start_app(make_settings(static_file), [controlled])
    controlled.sync(svc("a", "10.9.0.1"), svc("b", "10.9.0.2"))
    await eventually(lambda: served(app, "slow") == 2)
    controlled.sync()  # everything gone: held
    await eventually(lambda: status_of(app, "slow")["degraded"] == 1)
    controlled.publish((), synced=False)  # re-listing, as after a reconnect
    await past_next_rebuild(app)
    assert app.pipeline.confirm("slow")
    await past_next_rebuild(app)
    assert status_of(app, "slow")["degraded"] == 1 and hold_ends(caplog) == []
    assert served(app, "slow") == 2
    controlled.publish((), synced=True)
    await eventually(lambda: hold_ends(caplog))
    assert hold_ends(caplog)[0].startswith("held removal confirmed by an operator registry=slow")
    assert served(app, "slow") == 0


async def test_a_degraded_registry_logs_each_new_reason_once(
    static_file: Path, start_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mcpserver.registry")
    app = await start_app(make_settings(static_file))
    registry = app.registries[0]
    await eventually(lambda: registry.view().status is Status.READY)

    def lines() -> list[str]:
        return warnings(caplog, "mcpserver.registry", "registry ")

    write_text(static_file, "services: [\n")
    await eventually(lambda: "not valid YAML" in registry.view().detail)
    write_text(static_file, "")
    await eventually(lambda: "empty" in registry.view().detail)
    write_text(static_file, "services: [\n")
    await eventually(lambda: "not valid YAML" in registry.view().detail)
    said = lines()
    assert len(said) == 3, said
    assert said[0].startswith("registry degraded registry=files: ") and "not valid YAML" in said[0]
    assert said[1].startswith("registry still degraded, reason changed registry=files: ")
    assert "the file is empty" in said[1]
    assert "not valid YAML" in said[2] and "reason changed" in said[2]
    write_services(static_file, [service("cart", "10.1.0.1")])
    await eventually(lambda: registry.view().status is Status.READY)
    assert len(lines()) == 3  # recovering is INFO


async def test_the_wait_for_a_registry_is_said_at_most_every_30s_and_nothing_spins(
    static_file: Path,
    start_app: AppFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With startup.serve_partial_after and a registry that never lists, the deadline used
    to make the waiter wake every 10 ms until the first snapshot, writing a ~700-character
    warning each time (46 in 0.5 s) and postponing the very rebuild it waited for."""
    caplog.set_level(logging.INFO, logger="mcpserver")
    wakes = 0
    note = mcpserver.pipeline.Pipeline.note_waiting

    def counted(self: mcpserver.pipeline.Pipeline) -> None:
        nonlocal wakes
        wakes += 1
        note(self)

    monkeypatch.setattr(mcpserver.pipeline.Pipeline, "note_waiting", counted)
    settings = make_settings(
        static_file,
        startup={"serve_partial_after": "1s"},
        debounce={"after": "100ms", "max": "500ms"},  # the defaults
    )
    never = ControlledRegistry("never")
    app = await start_app(settings, [static_registry(settings), never])
    await eventually(lambda: app.store.snapshot is not None, within=10)
    await past_next_rebuild(app)
    assert warnings(caplog, "mcpserver.pipeline", "first snapshot waits") == []  # < 30 s
    (passed,) = warnings(caplog, "mcpserver.pipeline", "startup.serve_partial_after passed")
    assert "registries=never" in passed
    assert wakes <= 2, wakes  # the deadline, and perhaps a rounding wake just before it


async def test_the_waiting_warning_is_rate_limited_however_often_it_is_asked(
    static_file: Path,
    start_app: AppFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="mcpserver")
    monkeypatch.setattr(mcpserver.pipeline, "WAITING_LOG_EVERY", 0.3)
    settings = make_settings(static_file)
    never = ControlledRegistry("never")
    app = await start_app(settings, [static_registry(settings), never])
    loop = asyncio.get_running_loop()
    began = loop.time()
    while loop.time() - began < 1.0:
        app.pipeline.note_waiting()
        await asyncio.sleep(0.005)
    said = warnings(caplog, "mcpserver.pipeline", "first snapshot waits for registries=never")
    assert 2 <= len(said) <= 4, said  # every 0.3 s over 1 s, whoever asks how often


async def stream_close_lines(caplog: pytest.LogCaptureFixture, count: int = 1) -> list[str]:
    def closed() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "mcpserver.xds" and r.getMessage().startswith("stream closed")
        ]

    await eventually(lambda: len(closed()) >= count)
    return closed()


async def test_streams_ended_at_shutdown_are_logged_as_ended_by_the_server(
    static_file: Path, start_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mcpserver.xds")
    app = await start_app(make_settings(static_file))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        call = channel.stream_stream(
            ADS_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        await call.write(discovery_pb2.DiscoveryRequest(type_url=SE))
        first = await call.read()
        assert isinstance(first, discovery_pb2.DiscoveryResponse)
        await app.stop()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(call.read(), 10)
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "server shutting down" in (ended.value.details() or "")
    (line,) = await stream_close_lines(caplog)
    assert "reason=ended by server: server shutting down" in line, line


async def test_a_client_that_closes_and_a_bad_request_say_who_ended_the_stream(
    static_file: Path,
    start_app: AppFactory,
    connect: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mcpserver.xds")
    app = await start_app(make_settings(static_file))
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced(), 10)
    client.close()
    (closed,) = await stream_close_lines(caplog)
    assert closed.endswith("reason=client closed"), closed
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        call = channel.stream_stream(
            ADS_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        await call.write(discovery_pb2.DiscoveryRequest())  # no type URL: aborted
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await asyncio.wait_for(call.read(), 10)
    assert ended.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    lines = await stream_close_lines(caplog, 2)
    assert "reason=ended by server: bad request: " in lines[1], lines
