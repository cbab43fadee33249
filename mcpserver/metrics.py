"""Every Prometheus collector of the process, in one place, on a registry of our own.

The registry is created by the composition root and passed down, so tests can build as many
servers as they like in one process without collectors clashing. Names follow Prometheus'
rules (tests/component/test_metrics_names.py checks them): base units (`_seconds`,
`_bytes`), `_total` on counters only (prometheus_client appends it), snake case.

prometheus_client also emits a `<name>_created` series next to every counter and histogram
child by default; that doubled /metrics for nothing anyone graphs, so it is switched off (the
switch is process-wide in prometheus_client, and this is the only place that sets it).
"""

from __future__ import annotations

import asyncio
import platform
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated

# Seconds from a registry change to a stream writing it: debounce (100 ms to 1 s by default)
# plus a rebuild, so the interesting range is tens of milliseconds to tens of seconds.
PUSH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds from a response to its ACK: istiod applies the set before it ACKs, so this is
# istiod's processing time plus a round trip.
ACK_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def build_labels() -> dict[str, str]:
    """What `mcpserver_build_info` says: our version and the versions that shape the wire."""
    return {
        "version": _version("mcpserver"),
        "python": platform.python_version(),
        "grpc": _version("grpcio"),
        "protobuf": _version("protobuf"),
    }


class Metrics:
    """The collectors, grouped by the layer that updates them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # the process: CPU, memory, file descriptors, Python version and GC, on our registry
        # (the default registry's collectors are not exposed: we serve our own registry)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Info("mcpserver_build", "Versions this process runs.", registry=r)
        self.build_info.info(build_labels())
        # pipeline
        self.builds = Counter("mcpserver_snapshot_builds", "Snapshots published.", registry=r)
        self.build_seconds = Histogram(
            "mcpserver_snapshot_build_seconds", "Time to build one snapshot.", registry=r
        )
        self.encoded = Counter(
            "mcpserver_resources_encoded",
            "Resources converted and packed; unchanged ones are reused, not counted.",
            registry=r,
        )
        self.resources = Gauge(
            "mcpserver_snapshot_resources",
            "Resources in the current snapshot.",
            ["kind"],
            registry=r,
        )
        self.shard_resources = Gauge(
            "mcpserver_shard_resources",
            "Resources in each shard of server.shards (and previous_shards), by kind.",
            ["shard", "kind"],
            registry=r,
        )
        self.invalid = Gauge(
            "mcpserver_invalid_resources",
            "Resources withheld from istiod because Istio's validation would reject them.",
            ["registry"],
            registry=r,
        )
        self.rejected = Counter(
            "mcpserver_rejected_resources",
            "Times a resource was first found invalid and withheld.",
            ["registry"],
            registry=r,
        )
        self.build_failures = Counter(
            "mcpserver_snapshot_build_failures",
            "Rebuilds that failed (the previous snapshot stays served; retried with backoff).",
            registry=r,
        )
        self.vips = Gauge(
            "mcpserver_vips_allocated", "Addresses allocated from vip.cidr.", registry=r
        )
        self.removal_held = Gauge(
            "mcpserver_registry_removal_held",
            "1 while a mass removal from the registry is held (protection); see /debug/problems.",
            ["registry"],
            registry=r,
        )
        # registries
        self.skipped_records = Counter(
            "mcpserver_registry_skipped_records",
            "Registry records skipped as malformed (the rest keeps flowing).",
            ["registry", "reason"],
            registry=r,
        )
        self.registry_dropped_labels = Counter(
            "mcpserver_registry_dropped_labels",
            "Distinct metadata keys not made endpoint labels (each counted once, by reason: "
            "not-allowed, too-long, too-many).",
            ["registry", "reason"],
            registry=r,
        )
        self.registry_up = Gauge(
            "mcpserver_registry_status",
            "1 for the registry's current status: starting, ready, or degraded (its source "
            "fails, or a removal from it is held).",
            ["registry", "status"],
            registry=r,
        )
        self.registry_errors = Counter(
            "mcpserver_registry_errors",
            "Failed registry calls, lost connections and crashed watcher tasks (timeout, error, "
            "suspended, lost, noauth, auth-failed, read-only, crash, acl-filtered, ...).",
            ["registry", "kind"],
            registry=r,
        )
        self.registry_services = Gauge(
            "mcpserver_registry_services",
            "Services served to istiod from the registry: in the current snapshot (while a "
            "removal is held, what is still served; withheld ones are not counted).",
            ["registry"],
            registry=r,
        )
        # the Kubernetes sink (sink: [kubernetes])
        self.sink_leader = Gauge(
            "mcpserver_sink_leader",
            "1 while this replica holds the Kubernetes sink's Lease (the one that writes).",
            registry=r,
        )
        self.sink_writes = Counter(
            "mcpserver_sink_writes",
            "Writes the Kubernetes sink sent (verb: apply, delete; result: ok, error).",
            ["kind", "verb", "result"],
            registry=r,
        )
        self.sink_objects = Gauge(
            "mcpserver_sink_objects",
            "Objects in the apiserver that the Kubernetes sink owns (as listed or written).",
            registry=r,
        )
        self.sink_failed = Gauge(
            "mcpserver_sink_failed_objects",
            "Served objects the Kubernetes sink could not write at its last sync (refused, or "
            "a name held by an object it does not own).",
            registry=r,
        )
        # xds
        # `shard`: `all` on server.listen (the whole set), `k/N` for shard k of server.shards
        # N (or previous_shards): at most 1 + shards + previous_shards values
        self.streams = Gauge(
            "mcpserver_xds_streams", "Open ADS streams, per shard.", ["shard"], registry=r
        )
        self.responses = Counter(
            "mcpserver_xds_responses",
            "DiscoveryResponses sent.",
            ["type_url", "shard"],
            registry=r,
        )
        self.response_bytes = Counter(
            "mcpserver_xds_response_bytes",
            "Bytes of DiscoveryResponses sent.",
            ["type_url", "shard"],
            registry=r,
        )
        self.send_timeouts = Counter(
            "mcpserver_xds_send_timeouts",
            "Streams ended because the client did not take a response within server.send_timeout.",
            ["shard"],
            registry=r,
        )
        self.requests = Counter(
            "mcpserver_xds_requests",
            "DiscoveryRequests received, by what the protocol made of them.",
            ["type_url", "outcome", "shard"],
            registry=r,
        )
        self.push_latency = Histogram(
            "mcpserver_push_latency_seconds",
            "Seconds from a registry reporting a change to a stream writing the response that "
            "carries it (debounce, rebuild and send).",
            buckets=PUSH_BUCKETS,
            registry=r,
        )
        self.ack_latency = Histogram(
            "mcpserver_xds_ack_latency_seconds",
            "Seconds from a response written to its ACK, per client node.",
            ["node"],
            buckets=ACK_BUCKETS,
            registry=r,
        )
        self.tls_reloads = Counter(
            "mcpserver_tls_reloads",
            "Changed TLS certificate files read (ok), or refused and the previous pair kept "
            "(error).",
            ["result"],
            registry=r,
        )
        # the loop: what the soak (tests/resilience/soak/) watches for leaked tasks
        self.asyncio_tasks = Gauge(
            "mcpserver_asyncio_tasks",
            "Live asyncio tasks in the server's loop, counted at each scrape (a leak grows it).",
            registry=r,
        )
        self.heap_frozen = Gauge(
            "mcpserver_heap_frozen_objects",
            "Objects taken out of the garbage collector's scans once the first snapshot was "
            "served (gc.freeze; 0 until then). See mcpserver/runtime.py.",
            registry=r,
        )
        # app
        self.last_publish = Gauge(
            "mcpserver_snapshot_publish_timestamp_seconds",
            "Unix time of the last published snapshot change.",
            registry=r,
        )

    def count_tasks(self) -> None:
        """Set `mcpserver_asyncio_tasks` from the running loop (call it on the loop)."""
        self.asyncio_tasks.set(len(asyncio.all_tasks()))
