"""Shards as pure functions and as the builder keeps them: a service's shard depends on its
name alone (the same in every replica, process and restart), layouts never share a port, and
a rebuild makes new objects only of the shards whose sets changed."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcpserver.builder import Builder, BuildInputs
from mcpserver.settings import ConfigError, load_settings
from mcpserver.xds.shards import (
    MAX_SHARDS,
    layouts,
    shard_label,
    shard_of,
    shard_port,
)
from mcpserver.xds.snapshot import Snapshot
from mcpserver.xds.store import ShardStore, SnapshotStore
from tests.unit.test_pipeline_build import CIDR, svc, view

pytestmark = pytest.mark.unit


def test_a_shard_is_a_function_of_the_name_alone() -> None:
    """Golden values: a change of hash would hand every istiod a different partition on
    ports it already reads (and replicas of two versions would disagree)."""
    assert [shard_of("shop/cart", n) for n in (1, 2, 4, 16, 64)] == [0, 1, 1, 9, 57]
    assert [shard_of("consul/web", n) for n in (2, 4, 16, 64)] == [1, 1, 9, 25]
    # the same in another interpreter, whatever its hash seed
    code = "from mcpserver.xds.shards import shard_of; print(shard_of('shop/cart', 64))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
    )
    assert other.stdout.strip() == "57"


def test_shards_are_filled_evenly() -> None:
    counts = Counter(shard_of(f"ns/service-{i}", 16) for i in range(16_000))
    assert len(counts) == 16
    assert max(counts.values()) < 1.1 * 1000 and min(counts.values()) > 0.9 * 1000


def test_layouts_never_share_a_port() -> None:
    listen = 15051
    seen: dict[int, tuple[int, int]] = {}
    for n in range(1, MAX_SHARDS + 1):
        for k in range(n):
            port = shard_port(listen, n, k)
            assert port not in seen, (n, k, seen.get(port))
            seen[port] = (n, k)
    assert shard_port(listen, 1, 0) == listen  # the whole set stays where it was
    assert shard_port(listen, 4, 0) == 15451 and shard_port(listen, 4, 3) == 15454
    assert listen + 1 not in seen  # the admin port's default
    assert shard_port(0, 4, 2) == 0  # ephemeral listen: every shard ephemeral
    assert layouts(4) == (1, 4) and layouts(4, 16) == (1, 4, 16) and layouts(1, 1) == (1,)
    assert shard_label(1, 0) == "all" and shard_label(16, 3) == "3/16"


def _settings(tmp_path: Path, server: dict[str, Any]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"server": server, "registries": []}))
    load_settings(config, {})


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"shards": 0}, "server.shards: Input should be greater than or equal to 1"),
        ({"shards": 65}, "server.shards: Input should be less than or equal to 64"),
        ({"listen": "127.0.0.1:60000", "shards": 64}, "shard ports would pass 65535"),
        ({"admin": "127.0.0.1:15452", "shards": 4}, "admin: port 15452 is also an xds port"),
        ({"admin": "127.0.0.1:15051"}, "admin: port 15051 is also an xds port"),
        ({"previous_shards": 65}, "server.previous_shards: Input should be less than"),
    ],
)
def test_bad_shard_settings_name_the_field(
    tmp_path: Path, server: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _settings(tmp_path, server)
    assert any(message in p for p in err.value.problems), err.value.problems


def test_an_admin_port_on_another_host_is_not_a_clash(tmp_path: Path) -> None:
    _settings(tmp_path, {"listen": "127.0.0.1:15051", "admin": "127.0.0.2:15051"})


def test_a_rebuild_renews_only_the_shards_that_changed() -> None:
    services = [svc(f"s{i}", f"10.0.0.{i}") for i in range(40)]
    builder = Builder(BuildInputs({}, CIDR, layouts=(4, 16)))
    first = builder.build([view(*services)]).snapshot
    for n in (4, 16):
        _assert_parts_make_the_whole(first, n)
    changed = 7
    services[changed] = svc(f"s{changed}", "10.0.0.7", "10.0.1.7")
    second = builder.build([view(*services)]).snapshot
    for n in (4, 16):
        home = shard_of(f"shop/s{changed}", n)
        renewed = [k for k in range(n) if second.part(n, k) is not first.part(n, k)]
        assert renewed == [home]
        assert second.part(n, home).changes["ServiceEntry"].changed == (f"shop/s{changed}",)
        _assert_parts_make_the_whole(second, n)
    # nothing changed: the same snapshot, every shard the same object
    third = builder.build([view(*services)]).snapshot
    assert third is second


def test_a_service_removed_leaves_its_shard() -> None:
    services = [svc(f"s{i}", f"10.0.0.{i}") for i in range(10)]
    builder = Builder(BuildInputs({}, CIDR, layouts=(2,)))
    builder.build([view(*services)])
    gone = services.pop(3)
    snapshot = builder.build([view(*services)]).snapshot
    part = snapshot.part(2, shard_of(gone.key, 2))
    assert part.changes["ServiceEntry"].removed == (gone.key,)
    _assert_parts_make_the_whole(snapshot, 2)


def _assert_parts_make_the_whole(snapshot: Snapshot, n: int) -> None:
    for kind, whole in snapshot.sets.items():
        parts = [snapshot.part(n, k).sets[kind] for k in range(n)]
        names = [r.name for p in parts for r in p.resources]
        assert len(names) == len(set(names))
        assert sorted((r.name, r.version, r.framed) for p in parts for r in p.resources) == sorted(
            (r.name, r.version, r.framed) for r in whole.resources
        )
        for k, part in enumerate(parts):
            if kind == "ServiceEntry":  # a WorkloadEntry goes with its service
                assert all(shard_of(r.name, n) == k for r in part.resources)


def test_a_shard_store_wakes_its_streams_only_when_its_part_changed() -> None:
    services = [svc(f"s{i}", f"10.0.0.{i}") for i in range(20)]
    builder = Builder(BuildInputs({}, CIDR, layouts=(4,)))
    store = SnapshotStore()
    shards = [ShardStore(store, 4, k) for k in range(4)]
    woken = [0] * 4
    for k, shard in enumerate(shards):
        shard.subscribe(lambda k=k: woken.__setitem__(k, woken[k] + 1))  # type: ignore[misc]
    assert all(shard.snapshot is None for shard in shards)
    store.publish(builder.build([view(*services)]).snapshot)
    assert woken == [1, 1, 1, 1]
    services[5] = svc("s5", "10.0.0.5", "10.0.9.5")
    store.publish(builder.build([view(*services)]).snapshot)
    home = shard_of("shop/s5", 4)
    assert woken == [2 if k == home else 1 for k in range(4)]
    assert shards[home].snapshot is store.snapshot.part(4, home)  # type: ignore[union-attr]
