"""What the Kubernetes sink writes, decided without I/O: each served resource as the object
server-side apply sends, what an object listed from the apiserver says about its owner and
content, and the plan (apply these, delete those) that brings the apiserver to the served set.

The served set is the snapshot the pipeline published, after protection: a removal that
protection holds is still in it, so the sink never deletes what istiod is being kept from
losing. Objects are ours only when they carry our owner label; anything else with a name we
would write is reported and left alone.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from mcpserver_protos.istio.networking.v1alpha3 import service_entry_pb2, workload_entry_pb2

from mcpserver.xds.resources import PackedResource
from mcpserver.xds.snapshot import Snapshot

GROUP = "networking.istio.io"
VERSION = "v1"
OWNER_LABEL = "mcpserver.io/owner"
"""The replica set that owns an object (`kubernetes.owner`): the only objects the sink
updates or deletes carry it with its own value."""
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "mcpserver"
VERSION_ANNOTATION = "mcpserver.io/content-version"
"""The resource's content hash (the version istiod sees over MCP): an object listed with the
version we would write is not written again, so a restart or a new leader writes nothing
that did not change."""
FIELD_MANAGER = "mcpserver"


@dataclass(frozen=True, slots=True)
class ObjectKind:
    kind: str
    plural: str
    spec: type[Message]

    def path(self, namespace: str, name: str | None = None) -> str:
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{self.plural}"
        return base if name is None else f"{base}/{name}"

    @property
    def cluster_path(self) -> str:
        """Every object of the kind, in every namespace (for lists)."""
        return f"/apis/{GROUP}/{VERSION}/{self.plural}"


KINDS: Mapping[str, ObjectKind] = {
    "ServiceEntry": ObjectKind("ServiceEntry", "serviceentries", service_entry_pb2.ServiceEntry),
    "WorkloadEntry": ObjectKind(
        "WorkloadEntry", "workloadentries", workload_entry_pb2.WorkloadEntry
    ),
}

Key = tuple[str, str, str]
"""(kind, namespace, name) of one object."""


def desired(snapshot: Snapshot) -> dict[Key, PackedResource]:
    """Every resource of the served set, by the object it becomes."""
    found: dict[Key, PackedResource] = {}
    for kind in KINDS:
        type_set = snapshot.sets.get(kind)
        if type_set is None:
            continue
        for resource in type_set.resources:
            namespace, _, name = resource.name.partition("/")
            found[(kind, namespace, name)] = resource
    return found


def desired_among(
    snapshot: Snapshot, names: Mapping[str, Collection[str]]
) -> tuple[dict[Key, PackedResource], list[Key]]:
    """Of the `names` of each kind (what changed since a snapshot the apiserver holds), the
    resources the snapshot serves, and the keys of every name asked: the part of `desired`
    a plan needs when only those names can differ. A bisect each in the sorted set."""
    found: dict[Key, PackedResource] = {}
    asked: list[Key] = []
    for kind, kind_names in names.items():
        if kind not in KINDS:
            continue
        type_set = snapshot.sets.get(kind)
        resources = type_set.resources if type_set is not None else ()
        for name in kind_names:
            namespace, _, short = name.partition("/")
            key = (kind, namespace, short)
            asked.append(key)
            at = bisect.bisect_left(resources, name, key=_name)
            if at < len(resources) and resources[at].name == name:
                found[key] = resources[at]
    return found, asked


def _name(resource: PackedResource) -> str:
    return resource.name


def to_object(resource: PackedResource, owner: str) -> dict[str, Any]:
    """The object server-side apply sends for one resource: its spec as Istio's CRDs spell
    it (the protobuf JSON mapping, which the CRDs' schemas follow), its labels and annotations
    as served over MCP, plus our owner label and content version."""
    kind = KINDS[resource.kind]
    mcp = resource.decode()
    spec = kind.spec()
    mcp.body.Unpack(spec)
    namespace, _, name = mcp.metadata.name.partition("/")
    labels = dict(mcp.metadata.labels)
    labels[OWNER_LABEL] = owner
    labels[MANAGED_BY_LABEL] = MANAGED_BY
    annotations = dict(mcp.metadata.annotations)
    annotations[VERSION_ANNOTATION] = resource.version
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": kind.kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": json_format.MessageToDict(spec),
    }


@dataclass(frozen=True, slots=True)
class Listed:
    """One object as listed from the apiserver: whose it is and what content it has."""

    key: Key
    ours: bool
    version: str


def read_listed(kind: str, item: Mapping[str, Any], owner: str) -> Listed:
    """What one listed object says: ours when it carries our owner label with our value."""
    metadata = item.get("metadata") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    key = (kind, str(metadata.get("namespace", "")), str(metadata.get("name", "")))
    ours = labels.get(OWNER_LABEL) == owner
    return Listed(key, ours, str(annotations.get(VERSION_ANNOTATION, "")) if ours else "")


@dataclass(frozen=True, slots=True)
class Plan:
    """What brings the apiserver to the served set."""

    apply: tuple[Key, ...]
    """Ours (or nobody's yet) with another content version than served, or new."""
    delete: tuple[Key, ...]
    """Ours and no longer served."""
    foreign: tuple[Key, ...]
    """Served, but the name is taken by an object we do not own: left alone, reported."""

    def __bool__(self) -> bool:
        return bool(self.apply or self.delete)


def plan(wanted: Mapping[Key, str], ours: Mapping[Key, str], foreign: Collection[Key]) -> Plan:
    """`wanted`: served objects and their content versions; `ours`: the objects we own in the
    apiserver (as last listed or written) and theirs; `foreign`: names others hold. Only what
    differs is written (one dict walk in C per side when nothing changed)."""
    apply: list[Key] = []
    taken: list[Key] = []
    for key, _ in wanted.items() - ours.items():
        if key in foreign:
            taken.append(key)
        else:
            apply.append(key)
    delete = ours.keys() - wanted.keys()
    return Plan(tuple(sorted(apply)), tuple(sorted(delete)), tuple(sorted(taken)))
