"""Baselines: the least work anyone must do to get the same ServiceEntries onto the wire.

- `zk`: a walk of the same tree with a sliding window of listings in flight on one session
  (`--window`; `--client` kazoo, or mcpserver's own reader; `--no-stat` for listings
  without the node's stat), each listing parsed just enough for address, port and labels
  and built into its ServiceEntry (protobuf, versioned, wrapped) by the main thread while
  the client's thread reads the next, then dropped: one process that walks and builds,
  never holding the whole walk; then the set serialized. Issue 29 measured why: with every
  listing in flight at once the walk took 5.5-9.1 s at 10k where windows of 500 took
  1.8-2.8 s, and holding the whole walk made a 194 MiB baseline of what a bare build does
  in ~85 MiB;
- `zk-previous`: that earlier baseline (all at once, held, then built), kept so that one
  run shows both and a reader sees why the ratios moved;
- `static`: the fastest YAML parse of the same file (libyaml through yaml.CSafeLoader) plus
  the same direct build, each parsed service dropped once built; `static-json`: json.loads
  of the same estate as JSON, same build;
- `BareAdsServer`: a grpc.aio server that streams given bytes to every ADS client, with no
  logic at all (the fan-out baseline). grpc is imported only there: the import costs a
  baseline process ~0.1 s that the others do not need.

Run as `python -m bench.bare zk|static|static-json ...` in a subprocess of its own, so its
wall time (from spawn, imports included, as the server's cold start is) and its peak RSS
compare with the server's. It prints its phases as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import queue as queues
import sys
import time
import types
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, timestamp_pb2
from mcpserver_protos.istio.mcp.v1alpha1 import metadata_pb2, resource_pb2
from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2, workload_entry_pb2

from bench.workload import STATIC_NAMESPACE, ZK_NAMESPACE

if TYPE_CHECKING:  # grpc only for the bare server: importing it costs a baseline ~0.1 s
    import grpc

SE_BODY = "type.googleapis.com/istio.networking.v1alpha3.ServiceEntry"
RESOURCE_TYPE = "type.googleapis.com/istio.mcp.v1alpha1.Resource"
LABEL_PARAMS = ("version", "group", "application", "revision", "release")
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
DEFAULT_CREATED_MS = 946684800000  # 2000-01-01, mcpserver's default create_time


@dataclass(frozen=True, slots=True)
class Spec:
    """What one ServiceEntry says, as plain values."""

    namespace: str
    name: str
    port: tuple[str, int, str]  # name, number, protocol
    endpoints: tuple[tuple[str, dict[str, str]], ...]  # address, labels
    vip: str = ""
    created_ms: int = DEFAULT_CREATED_MS


def build(specs: Iterable[Spec], registry: str) -> list[any_pb2.Any]:
    """ServiceEntries wrapped as istiod reads them (Any of mcp Resource of Any of the spec),
    each with a content version, as mcpserver sends them."""
    return [build_one(spec, registry) for spec in specs]


def build_one(spec: Spec, registry: str) -> any_pb2.Any:
    """One ServiceEntry, wrapped and versioned."""
    entry = service_entry_pb2.ServiceEntry(
        hosts=[spec.name],
        addresses=[spec.vip] if spec.vip else [],
        ports=[
            service_entry_pb2.ServicePort(
                name=spec.port[0], number=spec.port[1], protocol=spec.port[2]
            )
        ],
        location=service_entry_pb2.ServiceEntry.MESH_INTERNAL,
        resolution=service_entry_pb2.ServiceEntry.STATIC,
        endpoints=[
            workload_entry_pb2.WorkloadEntry(address=a, labels={**labels, "registry": registry})
            for a, labels in spec.endpoints
        ],
    )
    body = entry.SerializeToString(deterministic=True)
    full_name = f"{spec.namespace}/{spec.name}"
    version = hashlib.blake2b(full_name.encode() + body, digest_size=10).hexdigest()
    created = timestamp_pb2.Timestamp()
    created.FromMilliseconds(spec.created_ms)
    wrapped = resource_pb2.Resource(
        metadata=metadata_pb2.Metadata(
            name=full_name, version=version, create_time=created, labels={"registry": registry}
        ),
        body=any_pb2.Any(type_url=SE_BODY, value=body),
    )
    return any_pb2.Any(type_url=RESOURCE_TYPE, value=wrapped.SerializeToString())


def serialize(resources: list[any_pb2.Any], type_url: str) -> bytes:
    """One state-of-the-world DiscoveryResponse holding every resource."""
    response = discovery_pb2.DiscoveryResponse(version_info="1", type_url=type_url, nonce="1")
    response.resources.extend(resources)
    return bytes(response.SerializeToString())


# ------------------------------------------------------------------------ ZooKeeper

ZK_CLIENTS = ("kazoo", "own")
"""kazoo, or mcpserver's own reader (registry/zookeeper/connection.py: one thread, no
hand-offs between threads; the fastest Python ZooKeeper reader we know of)."""


@dataclass(frozen=True, slots=True)
class ZkWalk:
    """How the baseline reads the tree: requests in flight at once (a sliding window),
    whether each listing carries the node's stat (kazoo's include_data: the providers node's
    ctime, which mcpserver sends as create_time), and which client."""

    window: int = 500
    stat: bool = True
    client: str = "kazoo"

    def describe(self) -> str:
        data = "with stat" if self.stat else "without stat"
        return f"{self.client}, window {self.window}, {data}"


def zk_connect(hosts: str, client: str) -> Any:
    """A started client of the kind asked for."""
    if client == "own":
        own = own_connection_class()(hosts, 30.0)
        own.start(30)
        return own
    from kazoo.client import KazooClient

    kazoo = KazooClient(hosts=hosts, timeout=30)
    kazoo.start(30)
    return kazoo


def own_connection_class() -> Any:
    """mcpserver's reader (registry/zookeeper/connection.py, which needs only jute.py and
    digestmd5.py) without running its packages' __init__: the ZooKeeper package imports the
    registry's base (config, pydantic; ~0.7 s) that a standalone reader would not pay."""
    import importlib.util

    spec = importlib.util.find_spec("mcpserver")
    assert spec is not None
    assert spec.submodule_search_locations
    registry = Path(next(iter(spec.submodule_search_locations))) / "registry"
    for name, path in (
        ("mcpserver.registry", registry),
        ("mcpserver.registry.zookeeper", registry / "zookeeper"),
    ):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(path)]
            sys.modules[name] = package
    from mcpserver.registry.zookeeper.connection import Connection

    return Connection


def zk_children(client: Any, path: str, stat: bool, kind: str) -> Any:
    """An async listing of `path` (children, or (children, stat))."""
    if kind == "own":
        return client.get_children_async(path)
    return client.get_children_async(path, include_data=stat)


def zk_build(
    hosts: str, root: str, registry: str, walk: ZkWalk
) -> tuple[list[any_pb2.Any], float, int]:
    """Walk the tree and build as the answers come: `walk.window` listings in flight, each
    answer parsed and built into its ServiceEntry by this thread while the client's thread
    reads the next ones, and then dropped (so the process never holds the whole walk). The
    resources in name order, when the last answer arrived (seconds from the start), and the
    endpoints built."""
    started = time.perf_counter()
    client = zk_connect(hosts, walk.client)
    answers: queues.SimpleQueue[tuple[int, str, Any]] = queues.SimpleQueue()

    def ask(n: int, iface: str, path: str) -> None:
        zk_children(client, path, walk.stat, walk.client).rawlink(
            lambda result: answers.put((n, iface, result))
        )

    try:
        ask(-1, "", root)
        _, _, listed = answers.get(timeout=60)
        interfaces = listed.get_nowait()
        interfaces = interfaces[0] if isinstance(interfaces, tuple) else interfaces
        built: list[tuple[str, any_pb2.Any]] = []
        issued = pending = endpoints = 0
        while issued < len(interfaces) or pending:
            while pending < walk.window and issued < len(interfaces):
                iface = interfaces[issued]
                ask(issued, iface, f"{root}/{iface}/providers")
                issued, pending = issued + 1, pending + 1
            n, iface, result = answers.get(timeout=60)
            pending -= 1
            answer = result.get_nowait()
            children, stat = answer if isinstance(answer, tuple) else (answer, None)
            spec = zk_spec(n, iface, children, stat.ctime if stat is not None else 0)
            built.append((spec.name, build_one(spec, registry)))
            endpoints += len(spec.endpoints)
        walked = time.perf_counter() - started
    finally:
        client.stop()
        client.close()
    built.sort(key=lambda nb: nb[0])
    return [b for _, b in built], walked, endpoints


def zk_spec(n: int, iface: str, children: list[str], ctime: int) -> Spec:
    """One interface's provider URLs parsed just enough for address, port and labels."""
    endpoints = []
    port = 0
    for child in children:
        url = unquote(child)
        rest = url.split("://", 1)[1]
        authority, _, tail = rest.partition("/")
        host, _, number = authority.rpartition(":")
        port = int(number)
        params = dict(p.partition("=")[::2] for p in tail.partition("?")[2].split("&"))
        endpoints.append((host, {k: params[k] for k in LABEL_PARAMS if k in params}))
    vip = f"240.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"
    created = ctime or DEFAULT_CREATED_MS
    endpoints.sort(key=lambda e: e[0])
    return Spec(ZK_NAMESPACE, iface.lower(), ("tcp-dubbo", port, "TCP"), tuple(endpoints), vip,
                created)  # fmt: skip


def zk_walk(hosts: str, root: str) -> dict[str, tuple[list[str], int]]:
    """The previous baseline's walk: interface -> (provider node names, providers ctime),
    every read in flight at once, the whole walk held."""
    from kazoo.client import KazooClient

    client = KazooClient(hosts=hosts, timeout=30)
    client.start(30)
    try:
        interfaces = client.get_children(root)
        pending = [
            (i, client.get_children_async(f"{root}/{i}/providers", include_data=True))
            for i in interfaces
        ]
        tree: dict[str, tuple[list[str], int]] = {}
        for iface, result in pending:
            children, stat = result.get()
            tree[iface] = (children, stat.ctime)
        return tree
    finally:
        client.stop()
        client.close()


def zk_specs(tree: dict[str, tuple[list[str], int]]) -> list[Spec]:
    """The previous baseline's parse of the whole walk at once."""
    return [
        zk_spec(n, iface, children, ctime)
        for n, (iface, (children, ctime)) in enumerate(sorted(tree.items()))
    ]


# --------------------------------------------------------------------------- static


def static_entries(path: Path, loader: str) -> list[dict[str, Any]]:
    """The file's services, parsed with json.loads for JSON; for YAML, the file (the bench's
    plain shape: `services:`, then one `- ` item per service) cut at each item and every
    item parsed alone with libyaml's C loader. Cut, not whole: libyaml takes 6.4 s for the
    whole 10k-service file and ~2 s for its 10k items one by one, and the baseline is the
    fastest anyone could read it (before issue 29's last re-measure it parsed the file
    whole, and the server, which reads entries one by one, came out at 0.43x)."""
    if loader == "json":
        data = json.loads(path.read_bytes())
        services: list[dict[str, Any]] = data.pop("services")
        return services
    import re

    import yaml

    text = path.read_text()
    head, _, body = text.partition("\n")
    if head.strip() != "services:":
        raise ValueError(f"{path}: not the bench's plain shape (first line {head!r})")
    return [
        yaml.load(piece, Loader=yaml.CSafeLoader)[0]
        for piece in re.split(r"(?m)^(?=- )", body)
        if piece.strip()
    ]


def static_spec(entry: dict[str, Any]) -> Spec:
    """One service entry, hosts rendered as the default template does."""
    namespace = entry.get("namespace", STATIC_NAMESPACE)
    port = entry["ports"][0]
    return Spec(
        namespace,
        f"{entry['name']}.{namespace}.svc.mesh",
        (port["name"], port["number"], port.get("protocol", "TCP")),
        tuple((i["address"], i.get("labels", {})) for i in entry["instances"]),
    )


def static_build(entries: list[dict[str, Any]], registry: str) -> tuple[list[any_pb2.Any], int]:
    """Build each service and drop its parsed form as it goes (the parsed file and the
    built set are never both whole); the resources and the endpoints built."""
    entries.reverse()  # popped from the end: in file order
    resources = []
    endpoints = 0
    while entries:
        spec = static_spec(entries.pop())
        resources.append(build_one(spec, registry))
        endpoints += len(spec.endpoints)
    return resources, endpoints


# ----------------------------------------------------------------------------- main


def measure(
    kind: str, source: str, root: str, registry: str, walk: ZkWalk | None = None
) -> dict[str, float]:
    """Every phase of the baseline, timed; the serialized bytes are counted, not kept.
    `zk`: the walk of `walk`, built as it goes; `zk-previous`: the suite's baseline before
    issue 29 (every listing in flight at once, the whole walk held, then built), kept to
    show once why the ratios moved."""
    phases: dict[str, float] = {}
    started = mark = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    if kind == "zk":
        resources, walked, endpoints = zk_build(source, root, registry, walk or ZkWalk())
        phases["walk"] = walked
        phase("walk_and_build")
    elif kind == "zk-previous":
        tree = zk_walk(source, root)
        phase("walk")
        specs = zk_specs(tree)
        del tree
        phase("parse")
        resources = build(specs, registry)
        endpoints = sum(len(s.endpoints) for s in specs)
        del specs
        phase("build")
    else:
        entries = static_entries(Path(source), "json" if kind == "static-json" else "yaml")
        phase("parse")
        resources, endpoints = static_build(entries, registry)
        phase("build")
    payload = serialize(resources, "networking.istio.io/v1/ServiceEntry")
    phase("serialize")
    phases["work"] = time.perf_counter() - started
    phases["bytes"] = float(len(payload))
    phases["services"] = float(len(resources))
    phases["endpoints"] = float(endpoints)
    phases["peak_rss_mib"] = peak_rss_mib()
    return phases


def peak_rss_mib() -> float:
    """This process's VmHWM (not ru_maxrss: bench/process.py says why)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmHWM")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare")
    parser.add_argument("kind", choices=["zk", "zk-previous", "static", "static-json"])
    parser.add_argument("source", help="ZooKeeper hosts, or the static file")
    parser.add_argument("--root", default="/dubbo", help="the Dubbo root to walk")
    parser.add_argument("--registry", default="bench", help="the `registry` label")
    parser.add_argument("--window", type=int, default=500, help="zk: listings in flight")
    parser.add_argument("--no-stat", action="store_true", help="zk: list without the stat")
    parser.add_argument("--client", choices=ZK_CLIENTS, default="kazoo", help="zk: client")
    args = parser.parse_args(argv)
    walk = ZkWalk(args.window, not args.no_stat, args.client)
    json.dump(measure(args.kind, args.source, args.root, args.registry, walk), sys.stdout)
    return 0


# ---------------------------------------------------------------------- bare server


class BareAdsServer:
    """ADS with no logic: every requested type gets an answer once; ServiceEntry gets the
    current bytes, and `publish()` sends new bytes to every open stream."""

    def __init__(self, service_entry: bytes, type_url: str) -> None:
        self._current = service_entry
        self._type_url = type_url
        self._streams: list[asyncio.Queue[bytes]] = []
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        import grpc

        handler = grpc.method_handlers_generic_handler(
            ADS_SERVICE,
            {
                "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                    self._stream,
                    request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                    response_serializer=None,
                )
            },
        )
        self._server = grpc.aio.server(options=[("grpc.max_send_message_length", -1)])
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    def publish(self, service_entry: bytes) -> None:
        self._current = service_entry
        for queue in self._streams:
            queue.put_nowait(service_entry)

    async def _stream(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], context: object
    ) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._streams.append(queue)

        async def read() -> None:
            answered: set[str] = set()
            async for request in requests:
                if request.type_url in answered:
                    continue  # an ACK
                answered.add(request.type_url)
                if request.type_url == self._type_url:
                    queue.put_nowait(self._current)
                else:
                    empty = discovery_pb2.DiscoveryResponse(
                        version_info="1", type_url=request.type_url, nonce="1"
                    )
                    queue.put_nowait(empty.SerializeToString())

        reader = asyncio.create_task(read())
        try:
            while True:
                yield await queue.get()
        finally:
            reader.cancel()
            self._streams.remove(queue)


if __name__ == "__main__":
    sys.exit(main())
