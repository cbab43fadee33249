"""The suite's one real ZooKeeper (the tests' launcher, testbed/zookeeper.py, with a larger
heap), each scale's estate written once under a root of its own and shared by every part.

The JVM reads `_JAVA_OPTIONS` after its command line, so it overrides the tests' -Xmx
without editing their launcher: 600k znodes do not fit the tests' 256 MB.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from kazoo.client import KazooClient

from bench.workload import Estate, zk_root
from bench.zk import populate
from testbed.zookeeper import ZooKeeper

JAVA_OPTIONS = "-Xmx3g -Djute.maxbuffer=67108864"


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
