"""Shards: which part of the served set a service belongs to, and which port serves each part.

istiod keeps one client and one store per `configSources` entry
(pilot/pkg/bootstrap/configcontroller.go, initConfigSources: one adsc.New and one memory store
per xds:// address, joined by the aggregate cache), and every response re-reads that source's
whole set of a type (pkg/adsc/adsc.go handleMCP unmarshals each resource and compares its
version). Served as N sources, a change costs istiod the one part it falls in, 1/N of the set.

A *layout* is a way of cutting the set: layout N serves shard k of N (k = 0..N-1) on a port of
its own. Layout 1, the whole set, is always served on `server.listen`; layout N > 1 on
`listen + 100 * N + k`. Ports depend on N so that two layouts can be served side by side while
istiods move from one to the other (`server.previous_shards`): no istiod is ever handed a
different part on a port it already reads, which would withdraw what it held there.

A service (its ServiceEntry and WorkloadEntries) belongs to shard `blake2b(namespace/name) mod
N`: a function of its name alone, the same in every replica, process and restart, so replicas
serve byte-identical shards.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

MAX_SHARDS: Final = 64
PORT_STRIDE: Final = 100
"""Layout N's ports start at listen + PORT_STRIDE * N; more than MAX_SHARDS, so layouts never
overlap."""
WHOLE: Final = "all"
"""The `shard` label of the whole set (layout 1, on server.listen)."""
SHARD_HEADER: Final = "mcpserver-shard"
"""Initial metadata of every stream: the shard it serves (`all`, or `k/N`)."""
SHARDS_HEADER: Final = "mcpserver-shards"
"""Initial metadata: server.shards, the layout istiods should read."""
SHARD_PORTS_HEADER: Final = "mcpserver-shard-ports"
"""Initial metadata: the bound ports of that layout's shards, in shard order."""


def shard_of(name: str, shards: int) -> int:
    """The shard of a service named `namespace/name` in layout `shards`."""
    if shards == 1:
        return 0
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def shard_port(listen_port: int, shards: int, shard: int) -> int:
    """The port of shard `shard` of layout `shards`, given the port of `server.listen` (0, an
    ephemeral port, gives 0: each shard then gets one of its own)."""
    if shards == 1 or listen_port == 0:
        return listen_port
    return listen_port + PORT_STRIDE * shards + shard


def layouts(shards: int, previous: int | None = None) -> tuple[int, ...]:
    """Every layout served, whole set first: 1, then `shards` and `previous` (if > 1)."""
    extra = sorted({n for n in (shards, previous or 1) if n > 1})
    return (1, *extra)


def shard_label(shards: int, shard: int) -> str:
    """How metrics, logs and pages name a shard: `all` for the whole set, else `k/N`."""
    return WHOLE if shards == 1 else f"{shard}/{shards}"


def highest_port(listen_port: int, served: Iterable[int]) -> int:
    """The highest port the layouts `served` would use."""
    return max(shard_port(listen_port, n, n - 1) for n in served)
