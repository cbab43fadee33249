"""Settings: one YAML file plus MCPSERVER_* environment overrides, validated once at startup.

Built once by the CLI and passed down; nothing imports a global settings object. A bad file
must stop the process with exit code 2 and messages that name each bad field, so every model
forbids unknown keys (a typo is an error, not a silently ignored option).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "MCPSERVER_"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ConfigError(Exception):
    """A config file that cannot be used; `problems` name each bad field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def parse_duration(value: object) -> float:
    """Accept 100ms / 1s / 2m / 1h or a bare number of seconds; return seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 100ms, 1s or 2m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError("expected a duration such as 100ms, 1s or 2m")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def check_address(value: str) -> str:
    """host:port with a numeric port; IPv6 hosts in brackets."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:15051")
    return value


Address = Annotated[str, BeforeValidator(lambda v: check_address(str(v)))]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TLSSettings(Frozen):
    cert_file: Path
    key_file: Path

    @field_validator("cert_file", "key_file")
    @classmethod
    def _exists(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value


class ServerSettings(Frozen):
    listen: Address = "127.0.0.1:15051"
    admin: Address = "127.0.0.1:15052"
    tls: TLSSettings | None = None
    # istiod accepts responses up to MaxInt32 bytes; 100k instances fit well under this.
    max_message_bytes: int = Field(default=512 * 1024 * 1024, gt=0, lt=2**31)


class DebounceSettings(Frozen):
    after: Duration = 0.1
    max: Duration = 1.0

    @model_validator(mode="after")
    def _order(self) -> DebounceSettings:
        if self.max < self.after:
            raise ValueError("debounce.max must be at least debounce.after")
        return self


class StartupSettings(Frozen):
    wait_for_registries: Duration = 30.0


class VIPSettings(Frozen):
    cidr: str = "240.241.0.0/16"

    @field_validator("cidr")
    @classmethod
    def _network(cls, value: str) -> str:
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError as err:
            raise ValueError(f"not a CIDR block: {err}") from None
        return value


class RegistrySettings(Frozen):
    """Fields every registry kind has."""

    name: str
    namespace: str = "default"
    endpoints: Literal["inline", "workloadentry"] = "inline"
    keep_when_empty: bool = False

    @field_validator("name", "namespace")
    @classmethod
    def _label(cls, value: str) -> str:
        if len(value) > 63 or not _DNS1123_LABEL.match(value):
            raise ValueError("must be a DNS-1123 label (lower case, digits, '-', at most 63)")
        return value


class StaticRegistrySettings(RegistrySettings):
    kind: Literal["static"]
    path: Path
    host_template: str = "{name}.{namespace}.svc.mesh"
    poll_interval: Duration = 1.0

    @field_validator("path")
    @classmethod
    def _readable(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @field_validator("host_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(name="n", namespace="ns", registry="r")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"unknown placeholder {err}; use {{name}} {{namespace}} {{registry}}"
            ) from None
        return value


class SecretSettings(Frozen):
    """A secret from exactly one source; its value is never logged."""

    value: str | None = Field(default=None, repr=False)
    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretSettings:
        if len([x for x in (self.value, self.file, self.env) if x]) != 1:
            raise ValueError("give exactly one of value, file, env")
        if self.file is not None and not self.file.is_file():
            raise ValueError(f"file not found: {self.file}")
        return self

    def resolve(self, env: Mapping[str, str]) -> str:
        if self.value:
            return self.value
        if self.file is not None:
            return self.file.read_text(encoding="utf-8").strip()
        return env.get(self.env or "", "")


class ZooKeeperAuthSettings(Frozen):
    """ZooKeeper digest auth; the credential (`user:password`) is never logged."""

    scheme: Literal["digest"] = "digest"
    credential: SecretSettings


class ZooKeeperRegistrySettings(RegistrySettings):
    kind: Literal["zookeeper"]
    hosts: str
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
    auth: ZooKeeperAuthSettings | None = None

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: str) -> str:
        servers = value.split("/", 1)[0]
        for server in servers.split(","):
            check_address(server.strip())
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
        return _check_template(value, interface="i", group="g", version="v", application="a")

    @field_validator("application_host_template")
    @classmethod
    def _app_template(cls, value: str) -> str:
        return _check_template(value, application="a")


class ConsulTLSSettings(Frozen):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True

    @model_validator(mode="after")
    def _files(self) -> ConsulTLSSettings:
        for path in (self.ca_file, self.cert_file, self.key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"file not found: {path}")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


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
    # One HTTP connection per watched service per datacenter (blocking queries hold theirs);
    # Consul allows 200 per client address unless limits.http_max_conns_per_client is raised.
    max_connections: int = Field(default=1024, ge=8)
    token: SecretSettings | None = None
    tls: ConsulTLSSettings | None = None

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
        return _check_template(value, service="s", datacenter="d")

    @field_validator("wait")
    @classmethod
    def _wait(cls, value: float) -> float:
        if not 1 <= value <= 600:
            raise ValueError("wait must be between 1s and 10m (Consul caps it at 10m)")
        return value


def _check_template(value: str, **placeholders: str) -> str:
    try:
        value.format(**placeholders)
    except (KeyError, IndexError, ValueError) as err:
        names = " ".join("{" + p + "}" for p in placeholders)
        raise ValueError(f"unknown placeholder {err}; use {names}") from None
    return value


RegistryConfig = StaticRegistrySettings | ZooKeeperRegistrySettings | ConsulRegistrySettings
AnyRegistrySettings = Annotated[RegistryConfig, Field(discriminator="kind")]


def demo_registry_path() -> Path:
    """The packaged demo static registry: the embedded default of `mcpserver serve`."""
    return Path(str(resources.files("mcpserver") / "data" / "demo.yaml"))


def default_registries() -> list[RegistryConfig]:
    return [StaticRegistrySettings(kind="static", name="demo", path=demo_registry_path())]


class Settings(Frozen):
    server: ServerSettings = ServerSettings()
    debounce: DebounceSettings = DebounceSettings()
    startup: StartupSettings = StartupSettings()
    vip: VIPSettings = VIPSettings()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    merge: Literal["first", "union"] = "first"
    registries: list[AnyRegistrySettings] = Field(default_factory=default_registries)

    @field_validator("registries")
    @classmethod
    def _unique(cls, value: list[AnyRegistrySettings]) -> list[AnyRegistrySettings]:
        seen: set[str] = set()
        for registry in value:
            if registry.name in seen:
                raise ValueError(f"registry name {registry.name!r} is used twice")
            seen.add(registry.name)
        return value


def apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """MCPSERVER_SERVER__LISTEN=0.0.0.0:15051 sets server.listen; values are read as YAML.

    Only variables naming a settings section count: others with our prefix (MCPSERVER_CONFIG,
    test switches such as MCPSERVER_REQUIRE_REAL) are not settings.
    """
    for key in sorted(env):
        if not key.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in key[len(ENV_PREFIX) :].split("__") if part]
        if not path or path[0] not in Settings.model_fields:
            continue
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = yaml.safe_load(env[key])
    return data


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Relative file paths in a config file are relative to that file, not to the cwd."""
    registries = data.get("registries")
    if isinstance(registries, list):
        for entry in registries:
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                entry["path"] = str(base / entry["path"])
    tls = (data.get("server") or {}).get("tls") if isinstance(data.get("server"), dict) else None
    if isinstance(tls, dict):
        for field in ("cert_file", "key_file"):
            if isinstance(tls.get(field), str):
                tls[field] = str(base / tls[field])


def describe(error: ValidationError) -> list[str]:
    """Turn pydantic's errors into `field.path: message` lines an operator can act on."""
    lines = []
    for item in error.errors():
        parts: list[str] = []
        for loc in item["loc"]:
            if isinstance(loc, int):
                parts[-1:] = [f"{parts[-1] if parts else ''}[{loc}]"]
            elif loc not in ("static", "zookeeper", "consul"):  # discriminator adds the kind
                parts.append(str(loc))
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{'.'.join(parts) or '(top level)'}: {message}")
    return lines


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read, override and validate; raise ConfigError naming every bad field."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError([f"{path}: cannot read: {err.strerror}"]) from None
        except yaml.YAMLError as err:
            raise ConfigError([f"{path}: not valid YAML: {err}"]) from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError([f"{path}: (top level): expected a mapping"])
        data = raw
        _resolve_paths(data, path.resolve().parent)
    data = apply_env(data, env or {})
    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe(err)) from None
