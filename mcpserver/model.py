"""Registry-neutral description of services and their instances.

Every registry (static file, ZooKeeper, Consul, ...) reduces what it watches to these frozen
values; conversion to Istio resources only ever sees them. Being frozen and hashable, an
unchanged service compares equal across rebuilds, which is what lets the pipeline reuse the
packed resource instead of re-encoding it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

Labels = tuple[tuple[str, str], ...]
"""Sorted (key, value) pairs: a hashable, order-independent label map."""


def labels_of(mapping: dict[str, str] | None) -> Labels:
    """Freeze a label mapping into its canonical sorted form."""
    return tuple(sorted((mapping or {}).items()))


EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Port:
    """A service port: what clients dial. `protocol` is an Istio protocol name (HTTP, TCP, ...)."""

    name: str
    number: int
    protocol: str = "TCP"
    target_port: int = 0


@dataclass(frozen=True, slots=True)
class Instance:
    """One reachable workload behind a service.

    `ports` maps service port names to the instance's own port numbers, only where they
    differ from the service port (Istio's endpoint `ports` field).
    """

    address: str
    ports: tuple[tuple[str, int], ...] = ()
    labels: Labels = ()
    weight: int = 0
    locality: str = ""
    network: str = ""
    service_account: str = ""


@dataclass(frozen=True, slots=True)
class Service:
    """One registry service, which becomes one ServiceEntry named `namespace/name`."""

    registry: str
    namespace: str
    name: str
    hosts: tuple[str, ...]
    ports: tuple[Port, ...]
    instances: tuple[Instance, ...] = ()
    addresses: tuple[str, ...] = ()
    labels: Labels = ()
    annotations: Labels = ()
    export_to: tuple[str, ...] = ()
    location: str = "MESH_INTERNAL"
    resolution: str = "STATIC"
    endpoints_mode: str = "inline"
    create_time: datetime = field(default=EPOCH_2000)
    shares_host_with: str = ""
    """The key of the service whose hosts this one serves too, by design: a part of it with
    fewer ports, for endpoints that must not get the others. istiod joins ServiceEntries of
    one host in one namespace (the oldest gives the service, each endpoint serves the ports
    of its own ServiceEntry), so such a part is created later than the service it belongs
    to; the merge lets it share the host instead of withholding it."""
    key: str = field(init=False, repr=False, compare=False)
    """The Istio resource name, `namespace/name`, unique across registries (computed once:
    every rebuild reads it for every service)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.namespace}/{self.name}")


@dataclass(frozen=True, slots=True)
class Problem:
    """Something withheld or skipped, as shown on /debug/problems and logged once."""

    registry: str
    subject: str
    message: str
    reason: str = ""  # a few words for metric labels (bad-port, not-a-url, ...)


def is_served(service: Service, keep_when_empty: bool) -> bool:
    """Whether a service reaches istiod: one without instances is removed, unless its
    registry keeps empty services (`keep_when_empty`) or it is not resolved from endpoints.
    The builder serves by it and protection counts by it."""
    return bool(service.instances) or service.resolution != "STATIC" or keep_when_empty
