"""Every Prometheus collector of the process, in one place, on a registry of our own.

The registry is created by the composition root and passed down, so tests can build as many
servers as they like in one process without collectors clashing.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """The collectors, grouped by the layer that updates them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
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
        # registries
        self.skipped_records = Counter(
            "mcpserver_registry_skipped_records",
            "Registry records skipped as malformed (the rest keeps flowing).",
            ["registry", "reason"],
            registry=r,
        )
        self.registry_up = Gauge(
            "mcpserver_registry_status",
            "1 for the registry's current status.",
            ["registry", "status"],
            registry=r,
        )
        self.registry_errors = Counter(
            "mcpserver_registry_errors",
            "Failed registry calls and lost connections (timeout, error, suspended, lost).",
            ["registry", "kind"],
            registry=r,
        )
        self.registry_services = Gauge(
            "mcpserver_registry_services",
            "Services in a registry's view.",
            ["registry"],
            registry=r,
        )
        # xds
        self.streams = Gauge("mcpserver_xds_streams", "Open ADS streams.", registry=r)
        self.responses = Counter(
            "mcpserver_xds_responses", "DiscoveryResponses sent.", ["type_url"], registry=r
        )
        self.response_bytes = Counter(
            "mcpserver_xds_response_bytes",
            "Bytes of DiscoveryResponses sent.",
            ["type_url"],
            registry=r,
        )
        self.requests = Counter(
            "mcpserver_xds_requests",
            "DiscoveryRequests received, by what the protocol made of them.",
            ["type_url", "outcome"],
            registry=r,
        )
