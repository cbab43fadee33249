"""Benchmark: the ZooKeeper registry's first listing and change latency, against a real
ZooKeeper, as ratios to a baseline measured in the same run.

Baseline: a plain kazoo walk of the same tree (get_children of the root, of each interface
and of each providers node, one after another): the round trips any watcher must make.

    python -m bench.zookeeper [--interfaces 2000] [--providers 10]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from kazoo.client import KazooClient

from mcpserver.metrics import Metrics
from mcpserver.registry.zookeeper.config import ZooKeeperRegistrySettings
from mcpserver.registry.zookeeper.watcher import ZooKeeperRegistry
from tests.integration.zookeeper import ZooKeeper


def populate(client: KazooClient, interfaces: int, providers: int) -> None:
    client.ensure_path("/dubbo")
    for i in range(interfaces):
        transaction = client.transaction()
        iface = f"com.example.bench.Service{i}"
        transaction.create(f"/dubbo/{iface}")
        transaction.create(f"/dubbo/{iface}/providers")
        for j in range(providers):
            host = f"10.{i // 250 % 250}.{i % 250}.{j + 1}"
            url = f"dubbo://{host}:20880/{iface}?side=provider&version=1"
            transaction.create(f"/dubbo/{iface}/providers/{quote(url, safe='')}")
        transaction.commit()


def populate_curator(client: KazooClient, apps: int, instances: int) -> None:
    """Curator/Spring Cloud layout: /services/<app>/<id> with JSON instance data."""
    client.ensure_path("/services")
    for i in range(apps):
        transaction = client.transaction()
        transaction.create(f"/services/app-{i}")
        for j in range(instances):
            address = f"10.{i // 250 % 250}.{i % 250}.{j + 1}"
            data = (
                f'{{"name": "app-{i}", "id": "{j}", "address": "{address}",'
                f' "port": 8080, "payload": {{"metadata": {{"zone": "z1"}}}}}}'
            )
            transaction.create(f"/services/app-{i}/{j}", data.encode())
        transaction.commit()


def raw_walk(client: KazooClient) -> int:
    count = 0
    for iface in client.get_children("/dubbo"):
        if "providers" in client.get_children(f"/dubbo/{iface}"):
            count += len(client.get_children(f"/dubbo/{iface}/providers"))
    if client.exists("/services"):
        for app in client.get_children("/services"):
            for ident in client.get_children(f"/services/{app}"):
                client.get(f"/services/{app}/{ident}")
                count += 1
    return count


async def ours(address: str) -> tuple[float, float, int]:
    settings = ZooKeeperRegistrySettings(kind="zookeeper", name="bench", hosts=address)
    registry = ZooKeeperRegistry(settings, Metrics(), {})
    changed = asyncio.Event()
    started = time.perf_counter()
    await registry.start(changed.set)
    while not registry.view().synced:
        changed.clear()
        await changed.wait()
    listing = time.perf_counter() - started
    services = len(registry.view().services)
    writer = KazooClient(hosts=address)
    writer.start(10)
    url = quote("dubbo://10.250.0.1:20880/com.example.bench.Service0?side=provider", safe="")
    before = registry.view()
    started = time.perf_counter()
    await asyncio.to_thread(writer.create, f"/dubbo/com.example.bench.Service0/providers/{url}")
    while registry.view() is before:
        changed.clear()
        await changed.wait()
    change = time.perf_counter() - started
    writer.stop()
    await registry.stop()
    return listing, change, services


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--interfaces", type=int, default=2000)
    parser.add_argument("--providers", type=int, default=10)
    parser.add_argument("--apps", type=int, default=0, help="Curator applications")
    parser.add_argument("--instances", type=int, default=10, help="instances per application")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = ZooKeeper(Path(tmp))
        server.start()
        try:
            client = KazooClient(hosts=server.address)
            client.start(10)
            populate(client, args.interfaces, args.providers)
            populate_curator(client, args.apps, args.instances)
            started = time.perf_counter()
            providers = raw_walk(client)
            baseline = time.perf_counter() - started
            client.stop()
            listing, change, services = asyncio.run(ours(server.address))
        finally:
            server.stop()
    print(f"interfaces={args.interfaces} apps={args.apps} records={providers}")
    print(f"raw kazoo walk: {baseline:.2f}s (baseline)")
    print(
        f"registry first listing (watches set, services built): {listing:.2f}s = "
        f"{listing / baseline:.2f}x; services={services}"
    )
    print(f"one provider added -> new view: {change * 1000:.1f}ms = {change / baseline:.4f}x")


if __name__ == "__main__":
    main()
