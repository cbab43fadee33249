"""One registry Service to one ServiceEntry, with endpoints inline or via a workloadSelector.

Inline endpoints are the default: one resource per service, and on current Istio an
endpoint-only change becomes an endpoint-only (EDS) push. `workloadentry` mode emits one
WorkloadEntry per instance instead, selected by a label only we set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from google.protobuf.message import Message
from mcpserver_protos.istio.networking.v1alpha3 import (
    service_entry_pb2,
    workload_entry_pb2,
    workload_selector_pb2,
)

from mcpserver.convert.naming import sanitize_label
from mcpserver.model import Instance, Labels, Service
from mcpserver.wire import encode_varint, spans_of

REGISTRY_LABEL = "registry"
SELECTOR_LABEL = "mcpserver.io/service"


@dataclass(frozen=True, slots=True)
class IstioResource:
    """A spec ready to validate and pack, with the metadata istiod stores beside it."""

    kind: str
    namespace: str
    name: str
    spec: Message
    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]
    create_time: datetime

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def workload_entry(
    instance: Instance, extra_labels: dict[str, str], override: bool = True
) -> workload_entry_pb2.WorkloadEntry:
    """An instance as Istio's WorkloadEntry message (inline endpoint or standalone).

    `extra_labels` override the instance's own when they must match a selector; otherwise
    (inline endpoints) they only fill in, so an endpoint merged from another registry keeps
    its `registry` label."""
    labels = dict(instance.labels)
    for key, value in extra_labels.items():
        if override or key not in labels:
            labels[key] = value
    entry = workload_entry_pb2.WorkloadEntry(
        address=instance.address,
        network=instance.network,
        locality=instance.locality,
        weight=instance.weight,
        service_account=instance.service_account,
    )
    # map fields item by item: passing dicts to the constructor goes through the Mapping
    # ABC's Python-level update(), 3x slower (this runs for every endpoint)
    ports, entry_labels = entry.ports, entry.labels
    for name, number in instance.ports:
        ports[name] = number
    for key, value in labels.items():
        entry_labels[key] = value
    return entry


def service_entry(service: Service) -> service_entry_pb2.ServiceEntry:
    """The ServiceEntry spec for one service."""
    entry = _without_endpoints(service)
    if service.endpoints_mode == "workloadentry":
        entry.workload_selector.CopyFrom(
            workload_selector_pb2.WorkloadSelector(labels=selector_labels(service))
        )
    else:
        entry.endpoints.extend(inline_endpoint(i, service.registry) for i in service.instances)
    return entry


def _without_endpoints(service: Service) -> service_entry_pb2.ServiceEntry:
    """The spec without endpoints or workload selector."""
    return service_entry_pb2.ServiceEntry(
        hosts=list(service.hosts),
        addresses=list(service.addresses),
        ports=[
            service_entry_pb2.ServicePort(
                number=p.number, protocol=p.protocol, name=p.name, target_port=p.target_port
            )
            for p in service.ports
        ],
        location=service.location,  # enum names are accepted
        resolution=service.resolution,
        export_to=list(service.export_to),
    )


ENDPOINTS = 6  # ServiceEntry.endpoints
ENDPOINTS_TAG = b"\x32"  # its tag: field 6, length-delimited


def inline_endpoint(instance: Instance, registry: str) -> workload_entry_pb2.WorkloadEntry:
    """One inline endpoint as service_entry() writes it."""
    return workload_entry(instance, {REGISTRY_LABEL: registry}, override=False)


def inline_parts(service: Service) -> tuple[service_entry_pb2.ServiceEntry, bytes, bytes]:
    """An inline-endpoint service's ServiceEntry without its endpoints, and the bytes that
    go before and after them: deterministic serialization writes fields in number order,
    so the spec's bytes are `head`, each endpoint framed as field 6, then `tail` (export_to,
    field 7; nothing later is set in inline mode). Lets a rebuild reuse the bytes of the
    endpoints that did not change instead of building and validating each again."""
    bare = _without_endpoints(service)  # what service_entry() writes for no instances
    export_to = list(bare.export_to)
    del bare.export_to[:]
    head = bare.SerializeToString(deterministic=True)
    tail = service_entry_pb2.ServiceEntry(export_to=export_to).SerializeToString(deterministic=True)
    bare.export_to.extend(export_to)
    return bare, head, tail


def join_inline(head: bytes, endpoints: Iterable[bytes], tail: bytes) -> bytes:
    """The spec's bytes from inline_parts() and each endpoint's own serialized bytes."""
    parts = [head]
    for endpoint in endpoints:
        parts.append(ENDPOINTS_TAG + encode_varint(len(endpoint)))
        parts.append(endpoint)
    parts.append(tail)
    return b"".join(parts)


def endpoint_spans(spec: bytes) -> list[int]:
    """Where each endpoint's own bytes lie in a ServiceEntry's serialized bytes, in order:
    flat (start, end) pairs. Found again when reused instead of kept per service (an array
    each was 1.1 MiB at 10k services, live at the peak of a cold start)."""
    return spans_of(spec, ENDPOINTS)


def selector_labels(service: Service) -> dict[str, str]:
    """Labels that tie a service's WorkloadEntries to its ServiceEntry and nothing else."""
    return {SELECTOR_LABEL: sanitize_label(service.name), REGISTRY_LABEL: service.registry}


def workload_entry_name(service: Service, instance: Instance) -> str:
    """Stable per instance: the service name plus a hash of address and ports."""
    identity = f"{instance.address}|{sorted(instance.ports)}"
    return f"{service.name}-{hashlib.blake2b(identity.encode(), digest_size=5).hexdigest()}"


def resource_labels(service: Service) -> tuple[tuple[str, str], ...]:
    """The labels on every resource a service becomes."""
    return _resource_labels(service.labels, service.registry)


@lru_cache(maxsize=256)  # a registry's services mostly share their labels (a Dubbo one, not)
def _resource_labels(labels: Labels, registry: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({**dict(labels), REGISTRY_LABEL: registry}.items()))


def convert(service: Service) -> list[IstioResource]:
    """Every Istio resource one service becomes."""
    labels = resource_labels(service)
    resources = [
        IstioResource(
            kind="ServiceEntry",
            namespace=service.namespace,
            name=service.name,
            spec=service_entry(service),
            labels=labels,
            annotations=service.annotations,
            create_time=service.create_time,
        )
    ]
    if service.endpoints_mode == "workloadentry":
        selector = selector_labels(service)
        resources.extend(
            IstioResource(
                kind="WorkloadEntry",
                namespace=service.namespace,
                name=workload_entry_name(service, instance),
                spec=workload_entry(instance, selector),
                labels=labels,
                annotations=(),
                create_time=service.create_time,
            )
            for instance in service.instances
        )
    return resources
