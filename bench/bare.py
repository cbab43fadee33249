"""Baselines: the least work anyone must do to get the same ServiceEntries onto the wire.

- `zk`: an async kazoo walk of the same tree (every providers node's children requested at
  once, pipelined on one session) plus a direct protobuf build and serialization of the same
  ServiceEntries (the provider URLs parsed just enough to get address and labels);
- `static`: the fastest YAML parse of the same file (libyaml through yaml.CSafeLoader) plus
  the same direct build; `static-json`: json.loads of the same estate as JSON, same build;
- `BareAdsServer`: a grpc.aio server that streams given bytes to every ADS client, with no
  logic at all (the fan-out baseline).

Run as `python -m bench.bare zk|static|static-json ...` in a subprocess of its own, so its wall time
(from spawn, imports included, as the server's cold start is) and its peak RSS compare with
the server's. It prints its phases as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, timestamp_pb2
from mcpserver_protos.istio.mcp.v1alpha1 import metadata_pb2, resource_pb2
from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2, workload_entry_pb2

from bench.workload import STATIC_NAMESPACE, ZK_NAMESPACE

SE_BODY = "type.googleapis.com/istio.networking.v1alpha3.ServiceEntry"
RESOURCE_TYPE = "type.googleapis.com/istio.mcp.v1alpha1.Resource"
LABEL_PARAMS = ("version", "group", "application", "revision", "release")
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


@dataclass(frozen=True, slots=True)
class Spec:
    """What one ServiceEntry says, as plain values."""

    namespace: str
    name: str
    port: tuple[str, int, str]  # name, number, protocol
    endpoints: tuple[tuple[str, dict[str, str]], ...]  # address, labels
    vip: str = ""
    created_ms: int = 946684800000  # 2000-01-01, mcpserver's default


def build(specs: Iterable[Spec], registry: str) -> list[any_pb2.Any]:
    """ServiceEntries wrapped as istiod reads them (Any of mcp Resource of Any of the spec),
    each with a content version, as mcpserver sends them."""
    out = []
    for spec in specs:
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
        out.append(any_pb2.Any(type_url=RESOURCE_TYPE, value=wrapped.SerializeToString()))
    return out


def serialize(resources: list[any_pb2.Any], type_url: str) -> bytes:
    """One state-of-the-world DiscoveryResponse holding every resource."""
    response = discovery_pb2.DiscoveryResponse(version_info="1", type_url=type_url, nonce="1")
    response.resources.extend(resources)
    return bytes(response.SerializeToString())


# ------------------------------------------------------------------------ ZooKeeper


def zk_walk(hosts: str, root: str) -> dict[str, tuple[list[str], int]]:
    """interface -> (provider node names, providers ctime): every read in flight at once."""
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
    """Provider URLs parsed just enough for address, port and labels."""
    specs = []
    for n, (iface, (children, ctime)) in enumerate(sorted(tree.items())):
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
        specs.append(
            Spec(
                ZK_NAMESPACE,
                iface.lower(),
                ("tcp-dubbo", port, "TCP"),
                tuple(sorted(endpoints, key=lambda e: e[0])),
                vip,
                ctime,
            )
        )
    return specs


# --------------------------------------------------------------------------- static


def static_specs(path: Path, loader: str) -> list[Spec]:
    """The file parsed with libyaml's C loader (or json.loads for a JSON file), hosts
    rendered as the default template does."""
    if loader == "json":
        data = json.loads(path.read_bytes())
    else:
        import yaml

        data = yaml.load(path.read_bytes(), Loader=yaml.CSafeLoader)
    specs = []
    for entry in data["services"]:
        namespace = entry.get("namespace", STATIC_NAMESPACE)
        port = entry["ports"][0]
        specs.append(
            Spec(
                namespace,
                f"{entry['name']}.{namespace}.svc.mesh",
                (port["name"], port["number"], port.get("protocol", "TCP")),
                tuple((i["address"], i.get("labels", {})) for i in entry["instances"]),
            )
        )
    return specs


# ----------------------------------------------------------------------------- main


def measure(kind: str, source: str, root: str, registry: str) -> dict[str, float]:
    """Every phase of the baseline, timed; the serialized bytes are counted, not kept."""
    phases: dict[str, float] = {}
    started = mark = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    if kind == "zk":
        tree = zk_walk(source, root)
        phase("walk")
        specs = zk_specs(tree)
        del tree
    else:
        specs = static_specs(Path(source), "json" if kind == "static-json" else "yaml")
    phase("parse")
    resources = build(specs, registry)
    phase("build")
    payload = serialize(resources, "networking.istio.io/v1/ServiceEntry")
    phase("serialize")
    phases["work"] = time.perf_counter() - started
    phases["bytes"] = float(len(payload))
    phases["services"] = float(len(specs))
    phases["endpoints"] = float(sum(len(s.endpoints) for s in specs))
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
    parser.add_argument("kind", choices=["zk", "static", "static-json"])
    parser.add_argument("source", help="ZooKeeper hosts, or the static file")
    parser.add_argument("--root", default="/dubbo", help="the Dubbo root to walk")
    parser.add_argument("--registry", default="bench", help="the `registry` label")
    args = parser.parse_args(argv)
    json.dump(measure(args.kind, args.source, args.root, args.registry), sys.stdout)
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
