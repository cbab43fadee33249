"""The state directory (issue 27 E): a lone replica keeps what protection remembers on disk,
written atomically at most once per interval, and holds by it after a restart."""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from mcpserver.app import App, StartError
from mcpserver.codec import decode_document
from mcpserver.xds.client import IstiodLikeClient
from tests.component.test_ads import se_url
from tests.conftest import (
    AppFactory,
    ClientFactory,
    admin_get,
    eventually,
    make_settings,
    past_next_rebuild,
    service,
    write_services,
)

pytestmark = pytest.mark.component

SIX = [service(f"s{i}", *(f"10.6.{i}.{j}" for j in range(1, 6))) for i in range(6)]


def names(client: IstiodLikeClient) -> set[str]:
    return {r.name for r in client.latest("ServiceEntry")}


def entries(client: IstiodLikeClient) -> list[bytes]:
    """The ServiceEntry set as istiod would hold it, each resource as bytes."""
    return sorted(r.SerializeToString() for r in client.responses[se_url(client)][-1].resources)


def state(directory: Path) -> Any:
    return decode_document(json.loads((directory / "files.json").read_bytes()))


def held_in(directory: Path) -> bool:
    try:
        return state(directory).records["files"].hold is not None
    except (OSError, ValueError):
        return False


async def test_a_restarted_replica_holds_what_it_held(
    tmp_path: Path, static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    directory = tmp_path / "state"
    write_services(static_file, SIX)
    settings = make_settings(static_file, state_dir=str(directory), state_write_interval="100ms")
    first = await start_app(settings)
    client = await connect(first.port)
    await client.wait_for(lambda c: len(names(c)) == 6, 10)
    await eventually((directory / "files.json").exists)
    write_services(static_file, SIX[:2])
    await eventually(functools.partial(held_in, directory))
    await past_next_rebuild(first)
    before = entries(client)
    since = first.pipeline.registry_states()[0].hold
    assert since is not None
    held_since = time.time() - (time.monotonic() - since.since)
    await first.stop()
    # the next run lists 2 services; the state says 6 were accepted and a hold was on
    again = await start_app(settings)
    client = await connect(again.port)
    await client.wait_for(lambda c: c.synced(), 10)
    assert entries(client) == before
    (after,) = again.pipeline.registry_states()
    assert after.hold is not None and after.origin == "state_dir"
    assert abs(time.time() - (time.monotonic() - after.hold.since) - held_since) < 0.05
    assert f"state_dir {directory}, written" in after.hold.reason
    # an addition flows, and the file follows
    write_services(static_file, [*SIX[:2], service("fresh", "10.7.0.1")])
    await client.wait_for(lambda c: "fresh" in names(c), 10)
    status, body = await admin_get(again.admin.port, "/debug/registries")
    assert status == 200 and json.loads(body)[0]["held"]["origin"] == "state_dir"


async def test_writes_are_atomic_and_at_most_once_per_interval(
    tmp_path: Path, static_file: Path, start_app: AppFactory
) -> None:
    directory = tmp_path / "state"
    settings = make_settings(static_file, state_dir=str(directory), state_write_interval="500ms")
    app = await start_app(settings)
    assert app.state is not None
    await eventually(lambda: app.state is not None and app.state.writes == 1)
    began = time.monotonic()
    for n in range(20):  # a change every rebuild for about a second
        write_services(static_file, [service("cart", "10.1.0.1"), service(f"x{n}", "10.9.0.1")])
        await past_next_rebuild(app)
    elapsed = time.monotonic() - began
    await eventually(
        lambda: state(directory).records["files"].checkpoints[-1].services[1].name == "x19"
    )
    assert app.state.writes <= 2 + elapsed / 0.5, (app.state.writes, elapsed)
    assert [p.name for p in directory.iterdir()] == ["files.json"]  # no temporary left


async def test_a_state_older_than_hold_for_is_not_used(
    tmp_path: Path, static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    directory = tmp_path / "state"
    write_services(static_file, SIX)
    settings = make_settings(static_file, state_dir=str(directory))
    first = await start_app(settings)
    await eventually((directory / "files.json").exists)
    await first.stop()
    document = json.loads((directory / "files.json").read_bytes())
    document["written"] -= 200  # older than hold_for (3m)
    (directory / "files.json").write_text(json.dumps(document))
    write_services(static_file, SIX[:2])
    again = await start_app(settings)
    client = await connect(again.port)
    await client.wait_for(lambda c: c.synced(), 10)
    assert names(client) == {"s0", "s1"}
    assert again.pipeline.registry_states()[0].hold is None


def test_a_state_dir_that_cannot_be_written_stops_the_start(
    tmp_path: Path, static_file: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = make_settings(static_file, state_dir=str(blocker / "state"))
    with pytest.raises(StartError, match=r"state_dir .*cannot write there"):
        App(settings)
    if os.geteuid() != 0:  # root writes anywhere
        readonly = tmp_path / "ro"
        readonly.mkdir(mode=0o500)
        with pytest.raises(StartError, match="state_dir"):
            App(make_settings(static_file, state_dir=str(readonly)))
