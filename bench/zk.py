"""One real ZooKeeper for the whole suite, each scale's estate written once under a root of
its own (`/dubbo<N>`), so parts can run alone or in any order and share what is written.

Writing the tree is the slow part of the suite (about 10k znodes/s from kazoo), hence the
sharing. A part that changes an estate (churn) restores it before it returns.

The server is the tests' ZooKeeper (Debian's jar, tests/integration/zookeeper.py) with a
larger heap: 600k znodes do not fit the tests' 256 MB. The JVM reads `_JAVA_OPTIONS` after
its command line, so it overrides the -Xmx there without editing the tests' launcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient

from bench.workload import Estate, address, interface, provider_node, providers_path, zk_root
from testbed.zookeeper import ZooKeeper

JAVA_OPTIONS = "-Xmx3g -Djute.maxbuffer=67108864"


def settle(result: Any) -> asyncio.Future[Any]:
    """An asyncio future for a kazoo IAsyncResult; kazoo calls back on its own thread. The
    future's result is the call's value, or the ZooKeeper error as a value (not raised)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def done(outcome: Any) -> None:
        try:
            value: Any = outcome.get_nowait()
        except Exception as err:  # the ZooKeeper error of this one call
            value = err
        loop.call_soon_threadsafe(_resolve, future, value)

    result.rawlink(done)
    return future


def on_done(result: Any, record: Callable[[float, Any], None]) -> None:
    """Call record(time, value-or-error) on kazoo's thread the moment ZooKeeper answers: the
    ack time of a write, without the hop to the event loop."""

    def done(outcome: Any) -> None:
        at = time.perf_counter()
        try:
            value: Any = outcome.get_nowait()
        except Exception as err:  # the ZooKeeper error of this one call
            value = err
        record(at, value)

    result.rawlink(done)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _batches(items: Iterable[int], size: int) -> Iterator[list[int]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


async def populate(client: KazooClient, root: str, estate: Estate) -> None:
    """Create the estate under `root`: one transaction per interface, a window of them in
    flight at once (one round trip at a time would take minutes at 50k)."""
    client.ensure_path(root)
    for batch in _batches(range(estate.services), 500):
        pending = []
        for i in batch:
            transaction = client.transaction()
            transaction.create(f"{root}/{interface(i)}")
            transaction.create(providers_path(root, i))
            for j in range(estate.instances):
                transaction.create(provider_node(root, i, address(i, j)))
            pending.append(settle(transaction.commit_async()))
        for outcome in await asyncio.gather(*pending):
            failed = outcome if isinstance(outcome, Exception) else None
            if isinstance(outcome, list):
                failed = next((o for o in outcome if isinstance(o, Exception)), None)
            if failed is not None:
                raise RuntimeError(f"writing the estate to ZooKeeper failed: {failed!r}")


async def read_endpoints(client: KazooClient, root: str) -> dict[str, frozenset[str]]:
    """host -> provider addresses under `root`, as ZooKeeper holds them now (every read in
    flight at once)."""
    from urllib.parse import unquote

    interfaces = await settle(client.get_children_async(root))
    reads = [settle(client.get_children_async(f"{root}/{i}/providers")) for i in interfaces]
    state: dict[str, frozenset[str]] = {}
    for iface, children in zip(interfaces, await asyncio.gather(*reads), strict=True):
        if isinstance(children, Exception):
            raise children
        hosts = frozenset(unquote(c).split("://", 1)[1].split(":", 1)[0] for c in children)
        if hosts:
            state[iface.lower()] = hosts
    return state


@dataclass
class BenchZooKeeper:
    workdir: Path
    server: ZooKeeper | None = None
    client: KazooClient | None = None
    written: dict[int, Estate] = field(default_factory=dict)
    fill_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def address(self) -> str:
        assert self.server is not None
        return self.server.address

    @property
    def admin(self) -> KazooClient:
        """The suite's own session: writes the estates and plays the providers."""
        assert self.client is not None
        return self.client

    def start(self) -> None:
        self.server = ZooKeeper(self.workdir / "zookeeper")
        previous = os.environ.get("_JAVA_OPTIONS")
        os.environ["_JAVA_OPTIONS"] = JAVA_OPTIONS
        try:
            self.server.start()
        finally:
            if previous is None:
                del os.environ["_JAVA_OPTIONS"]
            else:
                os.environ["_JAVA_OPTIONS"] = previous
        self.client = KazooClient(hosts=self.address, timeout=30)
        self.client.start(30)

    async def estate(self, estate: Estate) -> str:
        """The root holding this estate, written first if needed."""
        if self.server is None:
            self.start()
        root = zk_root(estate.services)
        known = self.written.get(estate.services)
        if known is not None:
            if known != estate:
                raise ValueError(f"{root} already holds {known}")
            return root
        started = time.perf_counter()
        await populate(self.admin, root, estate)
        self.fill_seconds[root] = time.perf_counter() - started
        self.written[estate.services] = estate
        return root

    def registry(self, root: str, name: str = "zk") -> dict[str, object]:
        """The registry entry of a server config that watches one estate."""
        return {
            "kind": "zookeeper",
            "name": name,
            "hosts": self.address,
            "namespace": "dubbo",
            "roots": [root],
        }

    def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.stop()
                self.client.close()
            self.client = None
        if self.server is not None:
            self.server.stop()
            self.server = None
