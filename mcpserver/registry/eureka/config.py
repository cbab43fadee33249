"""The Eureka registry's settings: the servers (peers) to read, which instances to serve, how
they become hosts and ports, how often to poll, basic auth and TLS."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

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

STATUSES = ("UP", "DOWN", "STARTING", "OUT_OF_SERVICE", "UNKNOWN")
"""Eureka's instance statuses (com.netflix.appinfo.InstanceInfo.InstanceStatus)."""


class EurekaAuthSettings(Frozen):
    """HTTP basic auth, as a secured Spring Cloud Eureka server asks; the password is never
    logged."""

    username: str
    password: SecretSettings


class EurekaRegistrySettings(RegistrySettings):
    kind: Literal["eureka"]
    # Eureka's service URLs (Spring's eureka.client.service-url.defaultZone), peers of one
    # cluster: read in order, the next one when one fails
    servers: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8761/eureka"], min_length=1
    )
    statuses: list[str] = Field(default_factory=lambda: ["UP"], min_length=1)
    apps: list[str] = Field(default_factory=lambda: ["*"])  # glob patterns of app names
    host_template: str = "{app}.eureka"  # placeholders: app, vip (each of an instance's VIPs)
    default_protocol: str = "http"  # the non-secure port's, without `protocol` metadata
    region: str = ""  # the locality region in front of an instance's zone
    poll_interval: Duration = 5.0  # /apps/delta this often (the Java client: 30 s)
    # /apps whole this often whatever the hash says: Eureka's hash counts statuses only, so
    # a missed delta that changed an address or metadata (not a status) would go unnoticed
    resync_interval: Duration = 300.0
    request_timeout: Duration = 10.0
    labels: LabelSettings = Field(default_factory=LabelSettings)
    auth: EurekaAuthSettings | None = None
    tls: ClientTLSSettings | None = None

    @field_validator("servers")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        urls = []
        for raw in value:
            url = urlsplit(raw)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ValueError(f"{raw!r}: expected http(s)://HOST:PORT/eureka")
            if url.username is not None or url.password is not None:
                # a password in a URL ends up in logs and on the status page
                raise ValueError(f"{url.hostname}: put the credentials in `auth`, not the URL")
            if url.port is None:
                raise ValueError(f"{raw!r}: give the port (Eureka's default is 8761)")
            check_address(url.netloc)
            urls.append(raw.rstrip("/"))
        return urls

    @field_validator("statuses")
    @classmethod
    def _statuses(cls, value: list[str]) -> list[str]:
        statuses = [v.strip().upper() for v in value]
        for status in statuses:
            if status not in STATUSES:
                raise ValueError(f"{status!r}: expected some of {', '.join(STATUSES)}")
        return statuses

    @field_validator("host_template")
    @classmethod
    def _template(cls, value: str) -> str:
        return check_template(value, app="a", vip="v")

    def source(self) -> str:
        return ", ".join(self.servers)

    @field_validator("poll_interval", "request_timeout", "resync_interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if not 0.05 <= value <= 3600:
            raise ValueError("must be between 50ms and 1h")
        return value

    @model_validator(mode="after")
    def _tls_scheme(self) -> EurekaRegistrySettings:
        if self.tls is not None and not all(s.startswith("https://") for s in self.servers):
            raise ValueError("tls is set but a server URL is http://; use https://")
        return self
