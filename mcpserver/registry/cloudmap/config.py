"""The AWS Cloud Map registry's settings: where the API is (region, endpoint URL, profile),
what to watch (namespaces, service patterns), how instances become endpoints, and the three
intervals of the polling (list, revision check, full reconcile).

Credentials are not settings: they come from the standard AWS chain (environment, shared
config and credentials files with `profile`, web identity, container and instance metadata),
so no secret ever sits in mcpserver's config or reaches its log.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from mcpserver.config import (
    Duration,
    LabelSettings,
    RegistrySettings,
    check_address,
    check_template,
)
from mcpserver.convert.ports import check_istio_protocol

_REGION = re.compile(r"^[a-z]{2}(-[a-z0-9]+)+-\d+$")


class CloudMapRegistrySettings(RegistrySettings):
    kind: Literal["cloudmap"]
    region: str | None = None  # None: AWS_REGION / AWS_DEFAULT_REGION / the profile's region
    endpoint_url: str | None = None  # a VPC endpoint or a local Cloud Map API server
    # Cloud Map's data-plane calls (DiscoverInstances*) go to `data-servicediscovery...`:
    # botocore prefixes the host with `data-`, which a custom endpoint does not answer. None:
    # prefix only when endpoint_url is unset.
    host_prefix: bool | None = None
    profile: str | None = None  # a profile of the shared AWS config files
    namespaces: list[str] = Field(default_factory=lambda: ["*"], min_length=1)  # names; "*": all
    services: list[str] = Field(default_factory=lambda: ["*"])  # glob patterns of service names
    host_template: str = "{service}.{namespace}"  # placeholders: service, namespace
    default_protocol: str = "TCP"  # when an instance has no protocol attribute
    default_port: int = Field(default=80, ge=1, le=65535)  # instances without a port
    protocol_attribute: str = "protocol"  # custom attribute naming an instance's protocol
    port_attribute: str = "port"  # custom attribute that overrides AWS_INSTANCE_PORT
    include_unknown: bool = False  # serve instances whose health is UNKNOWN (no health check)
    list_interval: Duration = 30.0  # ListNamespaces + ListServices (these throttle)
    poll_interval: Duration = 5.0  # DiscoverInstancesRevision per service
    reconcile_interval: Duration = 300.0  # DiscoverInstances for every service regardless
    request_timeout: Duration = 10.0
    max_concurrency: int = Field(default=8, ge=1, le=64)  # API calls in flight (threads)
    labels: LabelSettings = Field(default_factory=LabelSettings)

    def source(self) -> str:
        if self.endpoint_url:
            return self.endpoint_url
        return f"AWS Cloud Map, region {self.region}" if self.region else "AWS Cloud Map"

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        if value is not None and not _REGION.match(value):
            raise ValueError("expected an AWS region such as us-east-1")
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ("http", "https"):
            raise ValueError("expected http://HOST:PORT or https://HOST[:PORT]")
        host = rest.rstrip("/")
        if ":" in host.rpartition("]")[2]:
            check_address(host)
        elif not host:
            raise ValueError("expected http://HOST:PORT or https://HOST[:PORT]")
        return value.rstrip("/")

    @field_validator("namespaces")
    @classmethod
    def _namespaces(cls, value: list[str]) -> list[str]:
        names = [v.strip() for v in value]
        if "*" in names and names != ["*"]:
            raise ValueError('"*" (every namespace) stands alone')
        if any(not n for n in names):
            raise ValueError("a namespace name cannot be empty")
        return names

    @field_validator("host_template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value, service="s", namespace="n")

    @field_validator("default_protocol")
    @classmethod
    def _protocol(cls, value: str) -> str:
        return check_istio_protocol(value)

    @field_validator("list_interval", "poll_interval", "reconcile_interval", "request_timeout")
    @classmethod
    def _interval(cls, value: float) -> float:
        if not 0.05 <= value <= 86400:
            raise ValueError("must be between 50ms and 24h")
        return value

    @model_validator(mode="after")
    def _order(self) -> CloudMapRegistrySettings:
        if self.reconcile_interval < self.poll_interval:
            raise ValueError("reconcile_interval cannot be shorter than poll_interval")
        return self

    def prefix_host(self) -> bool:
        """Whether botocore may prefix the endpoint host (`data-`) for DiscoverInstances."""
        return self.endpoint_url is None if self.host_prefix is None else self.host_prefix
