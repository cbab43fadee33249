"""The churn's baseline, in a process of its own: a kazoo watcher holding a children watch on
every providers node of an estate, re-listing a node whenever its watch fires (what any
ZooKeeper watcher must do; one-shot watches coalesce, the listing catches up). Every
appearance and disappearance of a provider address is logged with the time the listing
that showed it arrived.

Own process, so that it is timed by its own work and not by the probe's or the writer's.
Prints `{"event": "ready"}` once every node is listed and watched; on `stop` from stdin it
waits (up to --within seconds) until its listings equal ZooKeeper's current state, writes
its log to --out (with when it caught up, and its CPU time since it was ready) and exits.

    python -m bench.zkwatcher --hosts H --root R --services N --out events.json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from kazoo.client import KazooClient

from bench.workload import providers_path, zk_host


def address_of(child: str) -> str:
    """A provider znode name's host address."""
    return unquote(child).split("://", 1)[1].split(":", 1)[0]


class Watcher:
    def __init__(self, client: KazooClient, root: str, services: int) -> None:
        self.client = client
        self.paths = {providers_path(root, i): zk_host(i) for i in range(services)}
        self.children: dict[str, frozenset[str]] = {}
        self.events: list[tuple[float, str, str, int]] = []  # time, host, address, +1/-1
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def _listed(self, path: str, at: float, children: list[str]) -> None:
        names = frozenset(children)
        host = self.paths[path]
        with self.lock:
            old = self.children.get(path)
            self.children[path] = names
            if old is not None:
                self.events.extend((at, host, address_of(c), 1) for c in names - old)
                self.events.extend((at, host, address_of(c), -1) for c in old - names)
            self.changed.notify_all()

    def _list(self, path: str) -> None:
        def fired(_event: object) -> None:
            self._list(path)

        def listed(outcome: Any) -> None:
            at = time.perf_counter()
            try:
                children = outcome.get_nowait()
            except Exception:  # the node's read failed: the next watch or stop re-lists it
                return
            self._listed(path, at, children)

        self.client.get_children_async(path, watch=fired).rawlink(listed)

    def start(self, within: float) -> None:
        for path in self.paths:
            self._list(path)
        with self.lock:
            if not self.changed.wait_for(lambda: len(self.children) == len(self.paths), within):
                raise TimeoutError("the first listings did not all arrive")

    def catch_up(self, within: float) -> bool:
        """Wait until the listings equal what ZooKeeper holds now."""
        pending = [(p, self.client.get_children_async(p)) for p in self.paths]
        expected = {p: frozenset(r.get(timeout=within)) for p, r in pending}
        with self.lock:
            return self.changed.wait_for(lambda: self.children == expected, within)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.zkwatcher")
    parser.add_argument("--hosts", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--services", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--within", type=float, default=60.0)
    args = parser.parse_args()
    client = KazooClient(hosts=args.hosts, timeout=30)
    client.start(30)
    watcher = Watcher(client, args.root, args.services)
    watcher.start(args.within)
    print(json.dumps({"event": "ready"}), flush=True)
    ready_cpu = time.process_time()
    sys.stdin.readline()
    caught_up = watcher.catch_up(args.within)
    done: dict[str, Any] = {
        "caught_up": caught_up,
        "at": time.perf_counter(),
        "cpu": time.process_time() - ready_cpu,
    }
    with watcher.lock:
        done["events"] = list(watcher.events)
    args.out.write_text(json.dumps(done))
    client.stop()
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
