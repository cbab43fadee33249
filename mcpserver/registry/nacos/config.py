"""The Nacos registry's settings: server address, API (gRPC for Nacos 2.x/3.x, HTTP v1 for
1.x), what to watch (namespaces, groups), how instances become endpoints, login and TLS.

`address` is the HTTP port (8848), as every Nacos client is configured; the gRPC port is
Nacos' fixed offset from it (+1000: 9848), overridable with `grpc_port`. Users mix the two up
(higress#1931), so the field says which one it is and the errors name both.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mcpserver.config import (
    ClientTLSSettings,
    Duration,
    Frozen,
    RegistrySettings,
    SecretSettings,
    check_address,
    check_template,
)

GRPC_PORT_OFFSET = 1000
"""Nacos 2.x/3.x: the SDK gRPC port is the HTTP port + 1000 (com.alibaba.nacos.api.common
.Constants / RpcConstants, `nacos.server.grpc.port.offset`)."""


class NacosAuthSettings(Frozen):
    """Nacos' username/password login; the password is never logged."""

    username: str
    password: SecretSettings


class NacosRegistrySettings(RegistrySettings):
    kind: Literal["nacos"]
    address: str = "http://127.0.0.1:8848"  # the HTTP port; gRPC is this + 1000
    api: Literal["grpc", "http"] = "grpc"  # grpc: Nacos 2.x/3.x; http: 1.x (v1 open API)
    grpc_port: int | None = Field(default=None, ge=1, le=65535)
    namespaces: list[str] = Field(default_factory=lambda: ["public"], min_length=1)
    # "*": every group, found through the catalog API (/nacos/v1/ns/catalog/services, Nacos
    # 1.x/2.x; Nacos 3 answers 410 there by default: list the groups)
    groups: list[str] = Field(default_factory=lambda: ["DEFAULT_GROUP"], min_length=1)
    services: list[str] = Field(default_factory=lambda: ["*"])  # glob patterns of names
    host_template: str = "{service}.{group}.{namespace}.nacos"
    host_metadata: str = "istio.hostname"  # an instance's own host, as Nacos' Istio module

    def source(self) -> str:
        return self.address

    default_protocol: str = "http"  # when no `protocol` metadata says otherwise
    include_unhealthy: bool = False
    # Dubbo on Nacos: `providers:<interface>:<version>:<group>` services and Dubbo 3
    # applications map exactly as the ZooKeeper kind maps them (one shared mapping)
    dubbo_host_template: str = "{interface}"
    application_host_template: str = "{application}.dubbo"
    label_params: list[str] = Field(
        default_factory=lambda: ["version", "group", "application", "revision", "release"]
    )
    list_interval: Duration = 10.0  # Nacos never pushes the service list: it is polled
    poll_interval: Duration = 5.0  # api: http only: each service's instances are polled
    # api: grpc: every subscribed service is also re-read this often, a safety net for a lost
    # push (Nacos' own client runs such an update task too)
    refresh_interval: Duration = 60.0
    page_size: int = Field(default=500, ge=1, le=10000)
    request_timeout: Duration = 10.0
    auth: NacosAuthSettings | None = None
    tls: ClientTLSSettings | None = None

    @field_validator("address")
    @classmethod
    def _url(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in ("http", "https"):
            raise ValueError("expected http://HOST:PORT or https://HOST:PORT (the HTTP port, 8848)")
        check_address(rest.rstrip("/"))
        return value.rstrip("/")

    @field_validator("namespaces")
    @classmethod
    def _namespaces(cls, value: list[str]) -> list[str]:
        # Nacos' default namespace is "public" (its id is empty in 1.x); an empty namespace
        # in a 2.x request lists nothing, so we always send "public". ["*"]: every namespace
        # the server has, followed as they come and go.
        namespaces = [v.strip() or "public" for v in value]
        if "*" in namespaces and namespaces != ["*"]:
            raise ValueError('"*" (every namespace) stands alone')
        return namespaces

    @field_validator("groups")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        for group in value:
            if not group.strip() or "@@" in group:
                raise ValueError(f"{group!r}: a Nacos group is a non-empty name without '@@'")
        return value

    @field_validator("host_template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value, service="s", group="g", namespace="n")

    @field_validator("dubbo_host_template")
    @classmethod
    def _dubbo_template(cls, value: str) -> str:
        return check_template(value, interface="i", group="g", version="v", application="a")

    @field_validator("application_host_template")
    @classmethod
    def _app_template(cls, value: str) -> str:
        return check_template(value, application="a")

    @field_validator("list_interval", "poll_interval", "refresh_interval", "request_timeout")
    @classmethod
    def _interval(cls, value: float) -> float:
        if not 0.05 <= value <= 3600:
            raise ValueError("must be between 50ms and 1h")
        return value

    @model_validator(mode="after")
    def _tls_scheme(self) -> NacosRegistrySettings:
        if self.tls is not None and not self.address.startswith("https://"):
            raise ValueError("tls is set but address is http://; use https://HOST:8848")
        return self

    def http_port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def host(self) -> str:
        return self.address.partition("://")[2].rpartition(":")[0].strip("[]")

    def grpc_target(self) -> str:
        """host:port of Nacos' gRPC SDK port."""
        port = self.grpc_port or self.http_port() + GRPC_PORT_OFFSET
        host = self.host()
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
