"""Pure parsing of the static registry file format (design.md section 1).

Each service entry is checked on its own: a malformed entry is skipped with a problem naming
its field, the others still flow. Entries that are well-formed but break Istio's rules (a bad
host, a duplicate port name, a non-IP address) are passed on; validation withholds them later
with Istio's own wording.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mcpserver.convert.naming import render_host
from mcpserver.model import EPOCH_2000, Instance, Port, Problem, Service, labels_of


class StaticFileError(Exception):
    """The whole file is unusable (not YAML, or no `services` list)."""


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StaticPort(_Entry):
    name: str
    number: int
    protocol: str = "TCP"
    target_port: int = 0


class StaticInstance(_Entry):
    address: str
    ports: dict[str, int] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    weight: int = Field(default=0, ge=0)
    locality: str = ""
    network: str = ""
    service_account: str = ""


class StaticService(_Entry):
    name: str
    namespace: str | None = None
    host: str | None = None
    hosts: list[str] = Field(default_factory=list)
    addresses: list[str] = Field(default_factory=list)
    ports: list[StaticPort]
    instances: list[StaticInstance] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    export_to: list[str] = Field(default_factory=list)
    location: Literal["MESH_INTERNAL", "MESH_EXTERNAL"] = "MESH_INTERNAL"
    resolution: Literal["STATIC", "DNS", "DNS_ROUND_ROBIN", "NONE"] = "STATIC"
    created: datetime | None = None


@dataclass(frozen=True, slots=True)
class StaticOptions:
    registry: str
    namespace: str
    host_template: str
    endpoints_mode: str


def _field_path(error: ValidationError) -> str:
    first = error.errors()[0]
    path = ".".join(str(p) for p in first["loc"]) or "(entry)"
    return f"{path}: {first['msg']}"


def to_service(entry: StaticService, options: StaticOptions) -> Service:
    namespace = entry.namespace or options.namespace
    hosts = [entry.host] if entry.host else list(entry.hosts)
    if not hosts:
        hosts = [render_host(options.host_template, entry.name, namespace, options.registry)]
    created = entry.created or EPOCH_2000
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return Service(
        registry=options.registry,
        namespace=namespace,
        name=entry.name,
        hosts=tuple(hosts),
        ports=tuple(Port(p.name, p.number, p.protocol, p.target_port) for p in entry.ports),
        instances=tuple(
            Instance(
                address=i.address,
                ports=tuple(sorted(i.ports.items())),
                labels=labels_of(i.labels),
                weight=i.weight,
                locality=i.locality,
                network=i.network,
                service_account=i.service_account,
            )
            for i in entry.instances
        ),
        addresses=tuple(entry.addresses),
        labels=labels_of(entry.labels),
        export_to=tuple(entry.export_to),
        location=entry.location,
        resolution=entry.resolution,
        endpoints_mode=options.endpoints_mode,
        create_time=created,
    )


def parse_static(text: str, options: StaticOptions) -> tuple[list[Service], list[Problem]]:
    """Services and per-entry problems from the file's text; StaticFileError if unusable."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise StaticFileError(f"not valid YAML: {err}") from None
    if data is None:
        data = {"services": []}
    if not isinstance(data, dict) or not isinstance(data.get("services", []), list):
        raise StaticFileError("expected a mapping with a `services` list")
    services: list[Service] = []
    problems: list[Problem] = []
    for index, raw in enumerate(data.get("services") or []):
        label = raw.get("name", f"#{index}") if isinstance(raw, dict) else f"#{index}"
        subject = f"services[{index}] ({label})"
        try:
            entry = StaticService.model_validate(raw)
        except ValidationError as err:
            problems.append(Problem(options.registry, subject, _field_path(err)))
            continue
        services.append(to_service(entry, options))
    return services, problems
