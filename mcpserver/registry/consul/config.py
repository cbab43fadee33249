"""The Consul registry's settings: agent address, filters, blocking-query wait, ACL, TLS."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from mcpserver.config import (
    ClientTLSSettings,
    Duration,
    LabelSettings,
    RegistrySettings,
    SecretSettings,
    check_address,
    check_template,
)
from mcpserver.convert.ports import check_istio_protocol


class ConsulTLSSettings(ClientTLSSettings):
    verify: bool = True


class ConsulRegistrySettings(RegistrySettings):
    kind: Literal["consul"]
    address: str = "http://127.0.0.1:8500"
    datacenters: list[str] = Field(default_factory=list)  # empty: the agent's own
    services: list[str] = Field(default_factory=lambda: ["*"])  # glob patterns of names
    exclude: list[str] = Field(default_factory=lambda: ["consul"])
    tags: list[str] = Field(default_factory=list)  # a service needs all of them
    include_warning: bool = False
    host_template: str = "{service}.service.consul"
    default_protocol: str = "TCP"
    wait: Duration = 30.0

    def source(self) -> str:
        return self.address

    # One HTTP connection per watched service per datacenter (blocking queries hold theirs);
    # Consul allows 200 per client address unless limits.http_max_conns_per_client is raised.
    max_connections: int = Field(default=1024, ge=8)
    token: SecretSettings | None = None
    tls: ConsulTLSSettings | None = None
    labels: LabelSettings = Field(default_factory=LabelSettings)

    @field_validator("default_protocol")
    @classmethod
    def _protocol(cls, value: str) -> str:
        return check_istio_protocol(value)

    @field_validator("address")
    @classmethod
    def _url(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ("http", "https"):
            raise ValueError("expected http://HOST:PORT or https://HOST:PORT")
        check_address(rest.rstrip("/"))
        return value.rstrip("/")

    @field_validator("host_template")
    @classmethod
    def _consul_template(cls, value: str) -> str:
        return check_template(value, service="s", datacenter="d")

    @field_validator("wait")
    @classmethod
    def _wait(cls, value: float) -> float:
        if not 1 <= value <= 600:
            raise ValueError("wait must be between 1s and 10m (Consul caps it at 10m)")
        return value
