"""The churn's writer, in a process of its own: provider additions and removals at a fixed
rate on one estate, each write's issue and ack time stamped (ack on kazoo's thread the
moment ZooKeeper answers).

Own process, so the rate holds whatever the measuring process is doing, and the writer's
kazoo traffic does not share a GIL with the probe or the watcher. Every write is
unambiguous to observe: an addition creates a provider with an address never used before;
a removal deletes one of the estate's own providers (each at most once, never re-created),
never taking a service below half its instances. time.perf_counter() is CLOCK_MONOTONIC on
Linux, so stamps compare across the suite's processes.

    python -m bench.zkwriter --hosts H --root R --services N --instances M \
        --rate 1000 --seconds 30 --out ops.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kazoo.client import KazooClient

from bench.workload import address, fresh_address, provider_url, providers_path


class Writer:
    def __init__(self, client: KazooClient, root: str, services: int, instances: int) -> None:
        self.client = client
        self.root = root
        self.services = services
        self.rng = random.Random(30)
        self.removable = [(i, j) for i in range(services) for j in range(instances)]
        self.rng.shuffle(self.removable)
        self.live = [instances] * services
        self.keep = max(1, instances // 2)
        self.added = 0
        self.ops: list[list[Any]] = []  # kind, service, address, issued, acked, error
        self.unacked = 0
        self.lock = threading.Lock()
        self.issuing = True
        self.all_acked = threading.Event()

    def _victim(self) -> tuple[int, str] | None:
        while self.removable:
            service, instance = self.removable.pop()
            if self.live[service] > self.keep:
                return service, address(service, instance)
        return None

    def issue(self, kind: str) -> None:
        victim = self._victim() if kind == "remove" else None
        if victim is None:
            kind, service = "add", self.rng.randrange(self.services)
            target = fresh_address(self.added)
            self.added += 1
        else:
            service, target = victim
        self.live[service] += 1 if kind == "add" else -1
        node = (
            f"{providers_path(self.root, service)}/{quote(provider_url(service, target), safe='')}"
        )
        op: list[Any] = [kind, service, target, time.perf_counter(), None, ""]
        self.ops.append(op)
        with self.lock:
            self.unacked += 1
        result = self.client.create_async(node) if kind == "add" else self.client.delete_async(node)

        def acked(outcome: Any) -> None:
            op[4] = time.perf_counter()
            try:
                outcome.get_nowait()
            except Exception as err:  # this write's ZooKeeper error, reported per op
                op[5] = repr(err)
            with self.lock:
                self.unacked -= 1
                if self.unacked == 0 and not self.issuing:
                    self.all_acked.set()

        result.rawlink(acked)

    def run(self, rate: float, seconds: float) -> float:
        """`rate` writes a second, alternating kinds, catching up after any stall."""
        total = int(rate * seconds)
        started = time.perf_counter()
        issued = 0
        while issued < total:
            due = min(total, int((time.perf_counter() - started) * rate) + 1)
            while issued < due:
                self.issue("add" if issued % 2 == 0 else "remove")
                issued += 1
            time.sleep(0.001)  # pacing: the rate's clock, not a synchronisation
        took = time.perf_counter() - started
        with self.lock:
            self.issuing = False
            if self.unacked == 0:
                self.all_acked.set()
        return took


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.zkwriter")
    parser.add_argument("--hosts", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--services", type=int, required=True)
    parser.add_argument("--instances", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    client = KazooClient(hosts=args.hosts, timeout=30)
    client.start(30)
    writer = Writer(client, args.root, args.services, args.instances)
    took = writer.run(args.rate, args.seconds)
    acked = writer.all_acked.wait(120)
    client.stop()
    client.close()
    args.out.write_text(json.dumps({"took": took, "all_acked": acked, "ops": writer.ops}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
