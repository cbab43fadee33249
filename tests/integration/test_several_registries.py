"""Static and ZooKeeper registries together: the same host from both, under each policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from testbed.zookeeper import ZooKeeper
from tests.conftest import AppFactory, ClientFactory, settings_for, write_services
from tests.integration.test_zookeeper import HOST, add_provider, provider_url


def settings(tmp_path: Path, zookeeper: ZooKeeper, policy: str) -> Any:
    static = tmp_path / "static.yaml"
    write_services(
        static,
        [
            {
                "name": "demo",
                "namespace": "dubbo",
                "host": HOST,
                "addresses": ["240.241.9.9"],
                "ports": [{"name": "tcp-dubbo", "number": 20880, "protocol": "TCP"}],
                "instances": [{"address": "10.30.0.1"}],
            }
        ],
    )
    return settings_for(
        tmp_path,
        {"kind": "static", "name": "files", "path": str(static), "poll_interval": "100ms"},
        {"kind": "zookeeper", "name": "zk", "hosts": zookeeper.address, "namespace": "dubbo"},
        merge=policy,
    )


@pytest.mark.parametrize("policy", ["first", "union"])
async def test_same_host_from_static_and_zookeeper(
    policy: str,
    tmp_path: Path,
    zookeeper: ZooKeeper,
    zk_writer: KazooClient,
    start_app: AppFactory,
    connect: ClientFactory,
) -> None:
    add_provider(zk_writer, provider_url("10.30.0.2"))
    app = await start_app(settings(tmp_path, zookeeper, policy))
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced(), 30)
    entries = [r for r in client.latest("ServiceEntry") if HOST in r.service_entry.hosts]
    assert len(entries) == 1  # never two ServiceEntries competing for one host
    (entry,) = entries
    assert f"{entry.namespace}/{entry.name}" == "dubbo/demo"  # the first registry's resource
    spec: Any = entry.spec
    assert list(spec.addresses) == ["240.241.9.9"]
    endpoints = {e.address: e.labels["registry"] for e in spec.endpoints}
    problems = [p for p in app.pipeline.problems if p.registry == "zk"]
    if policy == "first":
        assert endpoints == {"10.30.0.1": "files"}
        assert [p.subject for p in problems] == [f"dubbo/{HOST}"]
        assert "already served by registry 'files'" in problems[0].message
    else:
        assert endpoints == {"10.30.0.1": "files", "10.30.0.2": "zk"}
        assert problems == []
