"""Building blocks of every config model: durations, addresses, file paths, secrets, and the
fields every registry kind shares.

Registry kinds own their config models (`registry/<kind>/config.py`); they build them from
these pieces, so that one mechanism does each job for every kind: a relative file path is
resolved against the config file (validation context `base`) wherever it appears, a secret
comes from exactly one source and is never logged, and unknown keys are errors.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

BASE_CONTEXT = "base"
"""Validation-context key: the directory relative paths are resolved against."""
OFFLINE_CONTEXT = "offline"
"""Validation-context key: true when secret and TLS files need not exist (check-config
--offline, before a deploy)."""
_NUMERIC = re.compile(r"^[0-9.]+$")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$")


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


DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": _DURATION.pattern},
    ],
    "description": "a duration: 100ms, 1s, 2m, 1h, or a number of seconds",
}
"""What a duration is in JSON schema (the chart's values.schema.json is generated from these
models: scripts/gen_chart_schema.py)."""
NEVER_SCHEMA: dict[str, Any] = {
    "anyOf": [*DURATION_SCHEMA["anyOf"], {"const": "never"}, {"type": "null"}],
    "description": "a duration, or never",
}

Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(DURATION_SCHEMA)]


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration, for messages: 90 -> '1m30s'."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def check_address(value: str) -> str:
    """host:port with a numeric port: an IPv4 address, an IPv6 address in brackets, or a DNS
    name (a typo such as 256.1.1.1 is refused here, not when the server binds)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:15051")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"{host}: an IPv6 address goes in brackets, e.g. [::1]:15051")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{host[1:-1]} is not an IPv6 address") from None
    elif _NUMERIC.match(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host} is not an IPv4 address") from None
    elif ":" in host:
        raise ValueError(f"{host}: an IPv6 address goes in brackets, e.g. [{host}]:{port}")
    elif len(host) > 253 or not all(_HOST_LABEL.match(label) for label in host.split(".")):
        raise ValueError(f"{host} is not a host name (letters, digits, '-' and '.')")
    return value


Address = Annotated[
    str,
    BeforeValidator(lambda v: check_address(str(v))),
    WithJsonSchema({"type": "string", "pattern": r"^\S+:[0-9]{1,5}$", "description": "HOST:PORT"}),
]


def _resolve(value: Path, info: ValidationInfo) -> Path:
    """Relative paths are relative to the config file's directory, never to the cwd."""
    base = (info.context or {}).get(BASE_CONTEXT)
    if isinstance(base, Path) and not value.is_absolute():
        return base / value
    return value


def _existing_file(value: Path) -> Path:
    if value.is_dir():
        raise ValueError(f"{value} is a directory, not a file")
    if not value.is_file():
        raise ValueError(f"file not found: {value}")
    return value


def _secret_file(value: Path, info: ValidationInfo) -> Path:
    """A file a pod mounts from a Secret: checked unless the config is checked offline
    (`check-config --offline`, where the Secrets are not at hand)."""
    if (info.context or {}).get(OFFLINE_CONTEXT) and not value.exists():
        return value
    return _existing_file(value)


ConfigPath = Annotated[Path, AfterValidator(_resolve)]
"""A path in a config file, resolved against that file's directory."""

ExistingFile = Annotated[Path, AfterValidator(_resolve), AfterValidator(_existing_file)]
"""A ConfigPath that must name a readable file when the config is loaded."""

SecretFile = Annotated[Path, AfterValidator(_resolve), AfterValidator(_secret_file)]
"""An ExistingFile holding a secret or a TLS key or certificate: not required to exist when
the config is checked offline."""


class Frozen(BaseModel):
    """Immutable, and a typo is an error rather than a silently ignored option."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class ClientTLSSettings(Frozen):
    """TLS to a registry server: the CA to trust (the system's when unset) and, for servers
    that ask for one, our client certificate and key."""

    ca_file: SecretFile | None = None
    cert_file: SecretFile | None = None
    key_file: SecretFile | None = None

    @model_validator(mode="after")
    def _pair(self) -> ClientTLSSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class LabelSettings(Frozen):
    """Which registry metadata become endpoint labels (docs/configuration.md "Endpoint labels")."""

    # glob patterns of label keys (as they appear on the endpoint); ["*"]: every key
    allow: list[str] = Field(default_factory=lambda: ["*"])
    max_count: int = Field(default=32, ge=0, le=1024)  # labels from metadata per endpoint
    max_size: int = Field(default=63, ge=1, le=63)  # a longer key name or value is dropped


class SecretSettings(Frozen):
    """A secret from exactly one source; its value is never logged or shown."""

    value: str | None = Field(default=None, repr=False)
    file: SecretFile | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretSettings:
        if len([x for x in (self.value, self.file, self.env) if x]) != 1:
            raise ValueError("give exactly one of value, file, env")
        return self

    def resolve(self, env: Mapping[str, str]) -> str:
        if self.value:
            return self.value
        if self.file is not None:
            return self.file.read_text(encoding="utf-8").strip()
        return env.get(self.env or "", "")


def check_template(value: str, **placeholders: str) -> str:
    """A str.format template that uses only the given placeholders."""
    try:
        value.format(**placeholders)
    except (KeyError, IndexError, ValueError) as err:
        names = " ".join("{" + p + "}" for p in placeholders)
        raise ValueError(f"unknown placeholder {err}; use {names}") from None
    return value


def check_label(value: str) -> str:
    if len(value) > 63 or not _DNS1123_LABEL.match(value):
        raise ValueError("must be a DNS-1123 label (lower case, digits, '-', at most 63)")
    return value


class RegistrySettings(Frozen):
    """Fields every registry kind has; each kind adds `kind: Literal[...]` and its own."""

    kind: str
    name: str = Field(json_schema_extra={"pattern": _DNS1123_LABEL.pattern, "maxLength": 63})
    namespace: str = Field(
        default="default",
        json_schema_extra={"pattern": _DNS1123_LABEL.pattern, "maxLength": 63},
    )
    endpoints: str = "inline"
    keep_when_empty: bool = False

    def source(self) -> str:
        """Where the registry's records come from, for people (the status page, /debug):
        each kind says it its way."""
        return ""

    @field_validator("name", "namespace")
    @classmethod
    def _label(cls, value: str) -> str:
        return check_label(value)

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: str) -> str:
        if value not in ("inline", "workloadentry"):
            raise ValueError("expected inline or workloadentry")
        return value
