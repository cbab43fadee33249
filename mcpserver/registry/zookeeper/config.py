"""The ZooKeeper registry's settings: ensemble, roots to watch, naming templates, and how
we authenticate: TLS to the secure client port, SASL DIGEST-MD5, digest auth."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

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


class ZooKeeperAuthSettings(Frozen):
    """ZooKeeper digest auth; the credential (`user:password`) is never logged."""

    scheme: Literal["digest"] = "digest"
    credential: SecretSettings


class ZooKeeperSaslSettings(Frozen):
    """SASL as ZooKeeper's `SASLAuthenticationProvider` checks it (the user of the JAAS
    `Server` section's DigestLoginModule); the password is never logged."""

    mechanism: Literal["DIGEST-MD5"] = "DIGEST-MD5"
    username: str = Field(min_length=1)
    password: SecretSettings


class ZooKeeperTLSSettings(ClientTLSSettings):
    """TLS to ZooKeeper's secure client port (`secureClientPort`, 3.5+)."""

    # the name each server's certificate must carry; unset: the host as `hosts` gives it
    # (an IP address matches an IP SAN)
    server_name: str | None = None


class ZooKeeperRegistrySettings(RegistrySettings):
    kind: Literal["zookeeper"]
    hosts: str

    def source(self) -> str:
        return self.hosts

    roots: list[str] = Field(default_factory=lambda: ["/dubbo"])
    services_roots: list[str] = Field(default_factory=lambda: ["/services"])
    mapping: bool = True
    host_template: str = "{interface}"
    application_host_template: str = "{application}.dubbo"
    label_params: list[str] = Field(
        default_factory=lambda: ["version", "group", "application", "revision", "release"]
    )
    default_protocol: str = "http"
    session_timeout: Duration = 30.0
    connect_timeout: Duration = 15.0
    labels: LabelSettings = Field(default_factory=LabelSettings)
    auth: ZooKeeperAuthSettings | None = None
    sasl: ZooKeeperSaslSettings | None = None
    tls: ZooKeeperTLSSettings | None = None
    # after the servers refused our credentials: tried again when a credential or TLS file
    # changes, or after this long
    auth_retry: Duration = 300.0

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: str) -> str:
        servers = value.split("/", 1)[0]
        for server in servers.split(","):
            check_address(server.strip())
        return value

    @field_validator("auth_retry")
    @classmethod
    def _auth_retry(cls, value: float) -> float:
        if not 1 <= value <= 86400:
            raise ValueError("must be between 1s and 24h")
        return value

    @field_validator("roots", "services_roots")
    @classmethod
    def _roots(cls, value: list[str]) -> list[str]:
        for root in value:
            if not root.startswith("/") or (root != "/" and root.endswith("/")):
                raise ValueError(f"{root!r}: a ZooKeeper path starts with / and has no trailing /")
        return value

    @field_validator("host_template")
    @classmethod
    def _interface_template(cls, value: str) -> str:
        return check_template(value, interface="i", group="g", version="v", application="a")

    @field_validator("application_host_template")
    @classmethod
    def _app_template(cls, value: str) -> str:
        return check_template(value, application="a")
