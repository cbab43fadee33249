"""The churn's writer, in a process of its own: provider additions and removals at a fixed
rate on one estate, each write's issue and ack time stamped (ack on kazoo's thread the
moment ZooKeeper answers).

Own process, so the rate holds whatever the measuring process is doing, and the writer's
kazoo traffic does not share a GIL with the probe or the watcher. time.perf_counter() is
CLOCK_MONOTONIC on Linux, so stamps compare across the suite's processes.

Two patterns (`--pattern`):
- uniform: additions and removals alternate on services drawn uniformly from the estate. An
  addition creates a provider with an address never used before; a removal deletes one of
  the estate's own providers (each at most once, never re-created), never taking a service
  below half its instances.
- rolling: a rolling restart, as a deployment replaces its pods. Services are taken in a
  shuffled order, `--rolling-services` of them at a time; each replaces its instances one
  by one (remove one, add its replacement at a fresh address), then the next service
  starts. Every write still names an address added at most once and removed at most once.

Either way every write is unambiguous to observe.

    python -m bench.zkwriter --hosts H --root R --services N --instances M \
        --rate 1000 --seconds 30 [--pattern rolling --rolling-services 4] --out ops.json
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import threading
import time
from collections.abc import Callable
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

    def fresh(self) -> str:
        self.added += 1
        return fresh_address(self.added - 1)

    def issue(self, kind: str) -> None:
        """One write of the uniform pattern."""
        victim = self._victim() if kind == "remove" else None
        if victim is None:
            kind, service = "add", self.rng.randrange(self.services)
            target = self.fresh()
        else:
            service, target = victim
        self.live[service] += 1 if kind == "add" else -1
        self.write(kind, service, target)

    def write(self, kind: str, service: int, target: str) -> None:
        """Create or delete one provider, stamping the issue and (on kazoo's thread) the ack."""
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

    def run(self, rate: float, seconds: float, rolling: Rolling | None = None) -> float:
        """`rate` writes a second (uniform: alternating kinds; else the rolling restart's
        next), catching up after any stall."""
        total = int(rate * seconds)
        started = time.perf_counter()
        issued = 0
        while issued < total:
            due = min(total, int((time.perf_counter() - started) * rate) + 1)
            while issued < due:
                if rolling is None:
                    self.issue("add" if issued % 2 == 0 else "remove")
                else:
                    self.write(*rolling.next(self.fresh))
                issued += 1
            time.sleep(0.001)  # pacing: the rate's clock, not a synchronisation
        took = time.perf_counter() - started
        with self.lock:
            self.issuing = False
            if self.unacked == 0:
                self.all_acked.set()
        return took


class Rolling:
    """A rolling restart's writes: `window` services at a time, round robin, each replacing
    its instances one by one (remove the old, add the new); a finished service goes to the
    back of the queue with its new addresses, so the pattern never runs out."""

    def __init__(self, services: int, instances: int, window: int, rng: random.Random) -> None:
        order = list(range(services))
        rng.shuffle(order)
        self.queue = collections.deque(order)
        self.instances = instances
        self.current: dict[int, list[str]] = {}
        self.active: list[list[int]] = []  # [service, next step]; step 2j removes j, 2j+1 adds
        self.window = min(window, services)
        self.turn = 0

    def next(self, fresh: Callable[[], str]) -> tuple[str, int, str]:
        """(kind, service, address) of the next write."""
        while len(self.active) < self.window:
            self.active.append([self.queue.popleft(), 0])
        self.turn %= len(self.active)
        entry = self.active[self.turn]
        service, step = entry
        addresses = self.current.setdefault(
            service, [address(service, j) for j in range(self.instances)]
        )
        j = step // 2
        if step % 2 == 0:
            write = ("remove", service, addresses[j])
        else:
            addresses[j] = fresh()
            write = ("add", service, addresses[j])
        entry[1] += 1
        if entry[1] == 2 * self.instances:
            self.active.pop(self.turn)
            self.queue.append(service)
        else:
            self.turn += 1
        return write


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.zkwriter")
    parser.add_argument("--hosts", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--services", type=int, required=True)
    parser.add_argument("--instances", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pattern", choices=("uniform", "rolling"), default="uniform")
    parser.add_argument("--rolling-services", type=int, default=4)
    args = parser.parse_args()
    client = KazooClient(hosts=args.hosts, timeout=30)
    client.start(30)
    writer = Writer(client, args.root, args.services, args.instances)
    rolling = None
    if args.pattern == "rolling":
        rolling = Rolling(args.services, args.instances, args.rolling_services, writer.rng)
    took = writer.run(args.rate, args.seconds, rolling)
    acked = writer.all_acked.wait(120)
    client.stop()
    client.close()
    args.out.write_text(json.dumps({"took": took, "all_acked": acked, "ops": writer.ops}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
