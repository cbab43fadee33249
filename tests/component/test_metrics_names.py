"""/metrics as Prometheus' own linter (`promtool check metrics`) would judge it, checked by
rules of ours: names, help, `_total` on counters only, base units, no `_created` series;
and the series the operations surface promises are there and move."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import (
    AppFactory,
    ClientFactory,
    eventually,
    make_settings,
    service,
    write_services,
)

pytestmark = pytest.mark.component

SNAKE = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
# Units Prometheus wants expressed in base units (seconds, bytes), and spellings of them.
NON_BASE_UNITS = {
    "milliseconds",
    "millis",
    "ms",
    "microseconds",
    "us",
    "nanoseconds",
    "ns",
    "minutes",
    "hours",
    "days",
    "kilobytes",
    "kb",
    "megabytes",
    "mb",
    "gigabytes",
    "percent",
}
TIME_WORDS = {"latency", "duration", "time", "delay", "age"}
OWN_PREFIXES = ("mcpserver_", "process_", "python_")


def problems(families: Iterable[tuple[str, str, str, list[Sample]]]) -> list[str]:
    """Every naming rule a family breaks, as `name: why`."""
    found = []
    for name, kind, help_text, samples in families:
        words = name.split("_")
        if not SNAKE.fullmatch(name):
            found.append(f"{name}: not snake_case (lower case words joined by single _)")
        if ":" in name:
            found.append(f"{name}: colons are for recording rules")
        if not name.startswith(OWN_PREFIXES):
            found.append(f"{name}: not under mcpserver_ (or the process_/python_ collectors)")
        if not help_text.strip():
            found.append(f"{name}: no HELP")
        if NON_BASE_UNITS & set(words):
            found.append(f"{name}: use base units (_seconds, _bytes, _ratio)")
        if kind in ("histogram", "summary") and TIME_WORDS & set(words) and words[-1] != "seconds":
            found.append(f"{name}: a duration must end in _seconds")
        if "total" in words[:-1] or (kind != "counter" and words[-1] == "total"):
            found.append(f"{name}: _total is the counter suffix, and only that")
        if kind == "info" and not name.endswith("_info"):
            found.append(f"{name}: info metrics end in _info")
        if words[-1] in ("count", "sum", "bucket", "created"):
            found.append(f"{name}: ends in a suffix reserved for histogram/summary series")
        for sample in samples:
            if sample.name.endswith("_created"):
                found.append(f"{sample.name}: _created series are disabled")
            if kind == "counter" and not sample.name.endswith("_total"):
                found.append(f"{sample.name}: a counter's samples end in _total")
            if kind != "counter" and sample.name.endswith("_total"):
                found.append(f"{sample.name}: only counters end in _total")
    return found


def parse(text: str) -> list[tuple[str, str, str, list[Sample]]]:
    return [
        (f.name, f.type, f.documentation, f.samples) for f in text_string_to_metric_families(text)
    ]


def value(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


async def test_every_metric_follows_prometheus_naming_and_the_promised_ones_move(
    static_file: Path, start_app: AppFactory, connect: ClientFactory
) -> None:
    app = await start_app(make_settings(static_file))
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced(), 10)
    text = await scrape(app.admin.port)
    # histograms with labels only show once they have children: wait for an ACK first
    node = "sidecar~~test-1.istio-system~istio-system.svc.cluster.local"

    async def acked() -> str:
        text = await scrape(app.admin.port)
        assert value(text, "mcpserver_xds_ack_latency_seconds_count", node=node) is not None, (
            "no ACK latency observed"
        )
        return text

    if value(text, "mcpserver_xds_ack_latency_seconds_count", node=node) is None:
        text = await eventually(acked, within=10, every=0.05)

    # a registry change reaches the client: one push observed, no longer than it took
    before = value(text, "mcpserver_push_latency_seconds_count") or 0.0
    changed = time.monotonic()
    write_services(static_file, [service("cart", "10.1.0.1")])
    await client.wait_for(lambda c: [r.name for r in c.latest("ServiceEntry")] == ["cart"], 10)
    took = time.monotonic() - changed
    text = await scrape(app.admin.port)
    assert value(text, "mcpserver_push_latency_seconds_count") == before + 1
    latency = value(text, "mcpserver_push_latency_seconds_sum") or 0.0
    assert 0 < latency < took + 0.05  # from the registry's report to the write
    published = value(text, "mcpserver_snapshot_publish_timestamp_seconds") or 0.0
    assert time.time() - took - 1 < published <= time.time()

    assert problems(parse(text)) == []
    assert "_created" not in text
    # the process and Python collectors, and the build
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "python_gc_collections_total",
    ):
        assert value(text, name) is not None, name
    assert value(text, "python_info") == 1
    build = next(
        s
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "mcpserver_build_info"
    )
    assert set(build.labels) == {"version", "python", "grpc", "protobuf"}
    assert build.labels["version"] == "0.1.0" and build.value == 1

    # a client that leaves takes its ACK series with it (node ids would pile up)
    client.close()

    async def gone() -> str:
        text = await scrape(app.admin.port)
        assert value(text, "mcpserver_xds_ack_latency_seconds_count", node=node) is None, (
            "the ACK series outlived its client"
        )
        return text

    if value(text, "mcpserver_xds_ack_latency_seconds_count", node=node) is not None:
        text = await eventually(gone, within=10, every=0.05)


def test_the_checker_catches_what_it_should() -> None:
    """The rules above, each shown failing once (a checker that passes everything proves
    nothing)."""
    bad = """\
# HELP mcpserver_push_latency_ms Push latency.
# TYPE mcpserver_push_latency_ms histogram
mcpserver_push_latency_ms_bucket{le="+Inf"} 1.0
mcpserver_push_latency_ms_count 1.0
mcpserver_push_latency_ms_sum 1.0
# HELP mcpserver_requests_total_by_type Requests.
# TYPE mcpserver_requests_total_by_type gauge
mcpserver_requests_total_by_type 1.0
# HELP mcpserver_builds Builds.
# TYPE mcpserver_builds counter
mcpserver_builds_total 1.0
mcpserver_builds_created 1.7e9
# HELP mcpserver_fooBar Camel.
# TYPE mcpserver_fooBar gauge
mcpserver_fooBar 1.0
# HELP other_thing Not ours.
# TYPE other_thing gauge
other_thing 1.0
# HELP mcpserver_rebuild_duration A duration in no unit.
# TYPE mcpserver_rebuild_duration summary
mcpserver_rebuild_duration_count 1.0
mcpserver_rebuild_duration_sum 1.0
"""
    found = "\n".join(problems(parse(bad)))
    for expected in (
        "mcpserver_push_latency_ms: use base units",
        "mcpserver_requests_total_by_type: _total is the counter suffix",
        "mcpserver_builds_created: _created series are disabled",
        "mcpserver_fooBar: not snake_case",
        "other_thing: not under mcpserver_",
        "mcpserver_rebuild_duration: a duration must end in _seconds",
    ):
        assert expected in found, found
