"""Benchmark: rebuild cost at design scale (10k services, 100k instances).

Figures are ratios against baselines measured in the same run, never absolute targets:
- incremental rebuild (1 service changed) vs the cold build of everything;
- our response assembly (byte join of cached framed resources) vs protobuf serializing a
  DiscoveryResponse built from the same Any messages.

    python -m bench.snapshot [--services 10000] [--instances 10]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace

from envoy.service.discovery.v3 import discovery_pb2

from mcpserver.builder import Builder, BuildInputs, build
from mcpserver.model import Instance, Port, Service
from mcpserver.registry.view import Status, View
from mcpserver.xds.resources import encode_response

INPUTS = BuildInputs({}, "240.0.0.0/8")


def services(count: int, per: int) -> list[Service]:
    return [
        Service(
            registry="bench",
            namespace="bench",
            name=f"svc-{i}",
            hosts=(f"svc-{i}.bench.mesh",),
            ports=(Port("http", 8080, "HTTP"),),
            instances=tuple(
                Instance(f"10.{i // 250 % 250}.{i % 250}.{j + 1}", labels=(("version", "v1"),))
                for j in range(per)
            ),
        )
        for i in range(count)
    ]


def timed(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--instances", type=int, default=10)
    args = parser.parse_args()
    current = services(args.services, args.instances)
    view = View("bench", tuple(current), synced=True, status=Status.READY)

    cold = timed(lambda: build([view], INPUTS), repeat=1)
    builder = Builder(INPUTS)
    builder.build([view])
    changed = list(current)
    changed[0] = replace(changed[0], instances=(Instance("10.255.255.1"),))
    view2 = View("bench", tuple(changed), synced=True, status=Status.READY)
    views = [view, view2]

    def flip() -> None:  # one changed service each time, in both directions
        views.reverse()
        builder.build(views[:1])

    incremental = timed(flip)
    builder.build([view])
    second = builder.build([view2])

    type_set = second.snapshot.sets["ServiceEntry"]
    ours = timed(
        lambda: encode_response(
            type_set.version, "networking.istio.io/v1/ServiceEntry", "n", type_set.blob
        ),
        repeat=5,
    )
    anys = [r.to_any() for r in type_set.resources]

    def protobuf_way() -> bytes:
        response = discovery_pb2.DiscoveryResponse(
            version_info=type_set.version, type_url="networking.istio.io/v1/ServiceEntry", nonce="n"
        )
        response.resources.extend(anys)
        serialized: bytes = response.SerializeToString()
        return serialized

    baseline = timed(protobuf_way, repeat=5)
    print(f"services={args.services} instances={args.services * args.instances}")
    print(f"response bytes: {len(type_set.blob):,}")
    print(f"cold build: {cold:.3f}s (baseline)")
    print(
        f"incremental rebuild, 1 changed: {incremental:.3f}s = {incremental / cold:.3f}x cold; "
        f"re-encoded {second.encoded} resource(s)"
    )
    print(
        f"response assembly: {ours * 1e3:.2f}ms vs protobuf serialize {baseline * 1e3:.2f}ms "
        f"= {ours / baseline:.3f}x"
    )


if __name__ == "__main__":
    main()
