"""Reading and writing an estate in ZooKeeper with kazoo: each scale's estate is written
once under a root of its own (`/dubbo<N>`), so parts can run alone or in any order and share
what is written (bench/zkserver.py keeps the one server they share).

Writing the tree is the slow part of the suite (about 10k znodes/s from kazoo), hence the
sharing. A part that changes an estate (churn) restores it before it returns.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from kazoo.client import KazooClient

from bench.workload import Estate, address, interface, provider_node, providers_path


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


async def read_endpoints_aside(client: KazooClient, root: str) -> dict[str, frozenset[str]]:
    """`read_endpoints` on an event loop of its own, in a thread: issuing 10k reads and
    parsing them holds a loop for seconds, and the probes stamp each response when the
    caller's loop runs it, so pushes arriving during the read were stamped seconds late
    (the churn's "end-of-stream tail", issue 24)."""
    return await asyncio.to_thread(asyncio.run, read_endpoints(client, root))


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
