"""The Nacos registry's settings: server addresses, API (gRPC for Nacos 2.x/3.x, HTTP v1 for
1.x), what to watch (namespaces, groups), how instances become endpoints, login and TLS.

`addresses` are the HTTP ports (8848) of a cluster's servers, as every Nacos client is
configured (`serverAddr=a:8848,b:8848`); `address` is the one-server shorthand. The gRPC port
is Nacos' fixed offset from the HTTP port (+1000: 9848), overridable with `grpc_port`. Users
mix the two up (higress#1931), so the field says which one it is and the errors name both.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mcpserver.config import (
    ClientTLSSettings,
    Duration,
    Frozen,
    LabelSettings,
    RegistrySettings,
    SecretSettings,
    check_address,
    check_template,
)

DEFAULT_ADDRESS = "http://127.0.0.1:8848"
GRPC_PORT_OFFSET = 1000
"""Nacos 2.x/3.x: the SDK gRPC port is the HTTP port + 1000 (com.alibaba.nacos.api.common
.Constants / RpcConstants, `nacos.server.grpc.port.offset`)."""


class NacosAuthSettings(Frozen):
    """Nacos' username/password login; the password is never logged."""

    username: str
    password: SecretSettings


class NacosRegistrySettings(RegistrySettings):
    kind: Literal["nacos"]
    # the HTTP ports of a cluster's servers (gRPC is each + 1000), used one at a time: the next
    # when one fails; `address` is the one-server shorthand (default 127.0.0.1:8848)
    address: str | None = None
    addresses: list[str] = Field(default_factory=list)
    api: Literal["grpc", "http"] = "grpc"  # grpc: Nacos 2.x/3.x; http: 1.x (v1 open API)
    grpc_port: int | None = Field(default=None, ge=1, le=65535)
    namespaces: list[str] = Field(default_factory=lambda: ["public"], min_length=1)
    # "*": every group, found through the catalog API (/nacos/v1/ns/catalog/services, Nacos
    # 1.x/2.x; Nacos 3 serves it not by default: list the groups)
    groups: list[str] = Field(default_factory=lambda: ["DEFAULT_GROUP"], min_length=1)
    services: list[str] = Field(default_factory=lambda: ["*"])  # glob patterns of names
    host_template: str = "{service}.{group}.{namespace}.nacos"
    host_metadata: str = "istio.hostname"  # an instance's own host, as Nacos' Istio module

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
    labels: LabelSettings = Field(default_factory=LabelSettings)
    auth: NacosAuthSettings | None = None
    tls: ClientTLSSettings | None = None

    @field_validator("address")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value)

    @field_validator("addresses")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        urls = [check_url(v) for v in value]
        if len(set(urls)) != len(urls):
            raise ValueError("an address is listed twice")
        return urls

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
    def _servers(self) -> NacosRegistrySettings:
        if self.address is not None and self.addresses:
            raise ValueError("give address (one server) or addresses (a cluster), not both")
        if self.tls is not None and not all(u.startswith("https://") for u in self.servers()):
            raise ValueError("tls is set but an address is http://; use https://HOST:8848")
        return self

    def source(self) -> str:
        return ", ".join(self.servers())

    def servers(self) -> list[str]:
        """The HTTP base URLs of every server, in the order given."""
        return self.addresses or [self.address or DEFAULT_ADDRESS]

    def grpc_target(self, url: str | None = None) -> str:
        """host:port of Nacos' gRPC SDK port on the server at `url` (the first one)."""
        url = url or self.servers()[0]
        port = self.grpc_port or int(url.rpartition(":")[2]) + GRPC_PORT_OFFSET
        host = url.partition("://")[2].rpartition(":")[0].strip("[]")
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_url(value: str) -> str:
    """http(s)://HOST:PORT of Nacos' HTTP port."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise ValueError("expected http://HOST:PORT or https://HOST:PORT (the HTTP port, 8848)")
    check_address(rest.rstrip("/"))
    return value.rstrip("/")
