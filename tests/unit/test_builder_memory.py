"""What the builder keeps per service between rebuilds, measured: at 10k services it is part
of the process's peak (the first response is joined while all of it is live), so a change
that doubles it must fail here, not in a benchmark on a loaded machine."""

from __future__ import annotations

import gc
import tracemalloc
from datetime import UTC, datetime, timedelta

from mcpserver.builder import Builder, BuildInputs
from mcpserver.model import Instance, Port, Service
from mcpserver.registry.view import Status, View

SERVICES = 2000
BUDGET = 1250
"""Bytes the builder may keep per service besides the served bytes (10 endpoints each, a
VIP, a label of its own as Dubbo's): 1,175 measured, 2,850 before issue 29's slimming;
undoing one of the larger slimming changes (merge index, spec lengths, encoding caches
of values each service has its own of, endpoint positions found again) fails."""


def dubbo_like(n: int) -> Service:
    labels = (("version", "1.0.0"), ("zone", "z1"))
    return Service(
        registry="zk",
        namespace="dubbo",
        name=f"com.example.bench.service{n}",
        hosts=(f"com.example.bench.service{n}",),
        ports=(Port("dubbo", 20880, "TCP"),),
        instances=tuple(
            Instance(f"10.{n // 250}.{n % 250}.{j + 1}", labels=labels) for j in range(10)
        ),
        labels=(("dubbo-interface", f"com.example.bench.Service{n}"),),
        annotations=(("mcpserver.io/dubbo-interface", f"com.example.bench.Service{n}"),),
        create_time=datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=n),
    )


def test_the_builder_keeps_little_per_service_besides_the_served_bytes() -> None:
    view = View(
        "zk", tuple(dubbo_like(n) for n in range(SERVICES)), synced=True, status=Status.READY
    )
    gc.collect()
    tracemalloc.start()
    try:
        builder = Builder(BuildInputs({"zk": False}, "240.0.0.0/8"))
        result = builder.build([view])
        served = result.snapshot.sets["ServiceEntry"]
        payload = served.response("type.googleapis.com/istio.mcp.v1alpha1.Resource")
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - len(payload)
    finally:
        tracemalloc.stop()
    assert len(served.resources) == SERVICES
    assert kept / SERVICES < BUDGET, f"{kept / SERVICES:.0f} bytes kept per service"
