"""Settings: one YAML file plus MCPSERVER_* environment overrides, validated once at startup.

Built once by the CLI and passed down; nothing imports a global settings object. A bad file
must stop the process with exit code 2 and messages that name each bad field, so every model
forbids unknown keys (a typo is an error, not a silently ignored option). The registry list
is a union of the models in the kind table (registry/kinds.py): this module names no kind,
and loads the models of the kinds a config uses, no other.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    WithJsonSchema,
    create_model,
    field_validator,
    model_validator,
)

from mcpserver import failure
from mcpserver.config import (
    BASE_CONTEXT,
    DURATION_SCHEMA,
    NEVER_SCHEMA,
    OFFLINE_CONTEXT,
    Address,
    ConfigPath,
    Duration,
    Frozen,
    RegistrySettings,
    SecretFile,
    SecretSettings,
    parse_duration,
)
from mcpserver.protection import ProtectionPolicy
from mcpserver.registry.kinds import KINDS
from mcpserver.sink.config import KubernetesSinkSettings
from mcpserver.xds.shards import MAX_SHARDS, PORT_STRIDE, highest_port, layouts, shard_port

ENV_PREFIX = "MCPSERVER_"
CONFIG_ENV = "MCPSERVER_CONFIG"
"""Names the config file; the one MCPSERVER_ variable that is not a setting."""


class ConfigError(Exception):
    """A config file that cannot be used; `problems` name each bad field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


WILDCARD_HOSTS = frozenset(("0.0.0.0", "[::]", "::", ""))  # noqa: S104  # compared, not bound


class TLSSettings(Frozen):
    cert_file: SecretFile
    key_file: SecretFile


class ServerSettings(Frozen):
    listen: Address = "127.0.0.1:15051"
    admin: Address = "127.0.0.1:15052"
    tls: TLSSettings | None = None
    # Bearer token for the status page, /debug/* and state-changing endpoints (never logged);
    # /healthz, /readyz and /metrics stay open for probes and Prometheus.
    admin_token: SecretSettings | None = None
    # istiod accepts responses up to MaxInt32 bytes; 100k instances fit well under this.
    max_message_bytes: int = Field(default=512 * 1024 * 1024, gt=0, lt=2**31)
    # A stream whose client takes no response for this long is ended (istiod reads as it
    # goes; a client that stops reading would otherwise pin its response and snapshot).
    send_timeout: Duration = Field(default=60.0, gt=0)
    # Serve the set cut into this many parts as well, each on a port of its own (istiod lists
    # one configSources entry per part; a change then costs istiod one part). The whole set
    # stays on `listen`. xds/shards.py has the port rule; `mcpserver mesh-config` prints it.
    shards: int = Field(default=1, ge=1, le=MAX_SHARDS)
    # During a move from one shard count to another: the layout istiods still read.
    previous_shards: int | None = Field(default=None, ge=1, le=MAX_SHARDS)

    @model_validator(mode="after")
    def _ports(self) -> ServerSettings:
        listen = int(self.listen.rpartition(":")[2])
        admin = int(self.admin.rpartition(":")[2])
        served = layouts(self.shards, self.previous_shards)
        if listen and highest_port(listen, served) > 65535:
            raise ValueError(
                f"shards: shard ports would pass 65535 (layout N uses listen + {PORT_STRIDE}*N "
                f"+ 0..N-1; listen port {listen}): choose a lower listen port"
            )
        ports = {shard_port(listen, n, k) for n in served for k in range(n)} if listen else set()
        hosts = {self.listen.rpartition(":")[0], self.admin.rpartition(":")[0]}
        if admin and admin in ports and (len(hosts) == 1 or hosts & WILDCARD_HOSTS):
            raise ValueError(
                f"admin: port {admin} is also an xds port (listen {listen}, shards "
                f"{self.shards}): choose another"
            )
        return self

    def shard_listen(self, shards: int, shard: int) -> str:
        """The listen address of shard `shard` of layout `shards`."""
        host, _, port = self.listen.rpartition(":")
        return f"{host}:{shard_port(int(port), shards, shard)}"

    def layouts(self) -> tuple[int, ...]:
        """Every layout served: 1 (the whole set on `listen`), shards, previous_shards."""
        return layouts(self.shards, self.previous_shards)


class DebounceSettings(Frozen):
    """A rebuild starts after `after` of quiet, or `max` after the first change of a burst.

    Under sustained churn (a rolling restart) there is no quiet, so `max` plus one rebuild
    bounds how stale istiod's view gets: 0.5 s keeps a change under a second at 10k services
    and 1,000 changes/s (bench part c). It also bounds how often istiod takes a new set then
    (at most twice a second; istiod debounces its own pushes to proxies, 100 ms / 10 s)."""

    after: Duration = 0.1
    max: Duration = 0.5

    @model_validator(mode="after")
    def _order(self) -> DebounceSettings:
        if self.max < self.after:
            raise ValueError("debounce.max must be at least debounce.after")
        return self


def _never(value: object) -> object:
    return None if value in ("never", "") else value


class ShutdownSettings(Frozen):
    """SIGTERM: unready at once, serve `drain` more (load balancers stop sending), then end
    streams with UNAVAILABLE so istiod reconnects elsewhere; `grace` bounds the rest."""

    drain: Duration = 5.0
    grace: Duration = Field(default=10.0, gt=0)


class StartupSettings(Frozen):
    """The first snapshot waits for every registry: answering istiod without one would
    delete what istiod holds of it. Serving without it after a while is opt-in."""

    serve_partial_after: Annotated[Duration | None, WithJsonSchema(NEVER_SCHEMA)] = None

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "wait_for_registries" in data:
            raise ValueError(
                "wait_for_registries was replaced by serve_partial_after (default: wait for "
                "every registry however long; set a duration to serve without late ones)"
            )
        if isinstance(data, dict) and "serve_partial_after" in data:
            data = {**data, "serve_partial_after": _never(data["serve_partial_after"])}
        return data


class VIPSettings(Frozen):
    # Class E, never routed on the Internet; istiod's own auto-allocation range
    # (240.240.0.0/16) inside it is skipped. 16M addresses: 50k services collide rarely.
    cidr: str = "240.0.0.0/8"

    @field_validator("cidr")
    @classmethod
    def _network(cls, value: str) -> str:
        try:
            ipaddress.ip_network(value, strict=True)
        except ValueError as err:
            raise ValueError(f"not a CIDR block: {err}") from None
        return value


def _grace_durations(value: object) -> object:
    """One duration, or durations by kind: parsed here, so an error is one line that
    names the kind rather than pydantic's union members."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        parsed = {}
        for kind, duration in value.items():
            try:
                parsed[str(kind)] = parse_duration(duration)
            except ValueError as err:
                raise ValueError(f"{kind}: {err}") from None
        return parsed
    return parse_duration(value)


class ProtectionSettings(Frozen):
    """Protection against mass removal (docs/operations.md "What mcpserver does when things
    go wrong")."""

    max_removed_share: float = Field(default=0.5, gt=0, le=1)
    min_instances: int = Field(default=5, ge=1)
    hold_empty: bool = True
    hold_for: Annotated[Duration | None, WithJsonSchema(NEVER_SCHEMA)] = 180.0
    release_share: float = Field(default=0.1, ge=0, le=1)
    # Removals add up over this long (docs/operations.md "What mcpserver does when things go
    # wrong"):
    # a loss that arrives in slices (Eureka's eviction runs, ZooKeeper sessions expiring one
    # by one) is judged as one. 1m: longer than the spread of one fault's slices in the
    # registries we watch (ZooKeeper caps session timeouts at 40 s by default; Nacos marks a
    # silent instance unhealthy at 15 s and deletes it at 30 s; Eureka clients' leases
    # expire within a renewal interval of each other), yet short enough that a planned
    # scale-down spread over a few minutes flows.
    window: Duration = 60.0
    # After a registry's source came back (a reconnect, a server restart, a new session),
    # every removal is held this long while its clients register again: one duration for
    # every kind, or per kind ({eureka: 2m}); a kind not named keeps its own default (the
    # kind table's recovery_grace, docs/configuration.md says why each is what it is).
    recovery_grace: Annotated[
        float | dict[str, float] | None,
        BeforeValidator(_grace_durations),
        WithJsonSchema(
            {
                "anyOf": [
                    *DURATION_SCHEMA["anyOf"],
                    {
                        "type": "object",
                        "propertyNames": {"enum": list(KINDS)},
                        "additionalProperties": DURATION_SCHEMA,
                    },
                    {"type": "null"},
                ],
                "description": "a duration for every kind, or durations by kind",
            }
        ),
    ] = None

    @model_validator(mode="before")
    @classmethod
    def _hold_never(cls, data: Any) -> Any:
        if isinstance(data, dict) and "hold_for" in data:
            data = {**data, "hold_for": _never(data["hold_for"])}
        return data

    @field_validator("recovery_grace")
    @classmethod
    def _known_kinds(
        cls, value: float | dict[str, float] | None
    ) -> float | dict[str, float] | None:
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(KINDS))
            if unknown:
                raise ValueError(
                    f"unknown registry kind {', '.join(unknown)} (kinds: {', '.join(KINDS)})"
                )
        return value

    def grace_for(self, kind: str) -> float:
        """The recovery grace of registries of this kind, in seconds."""
        value = self.recovery_grace
        if isinstance(value, dict):
            return value.get(kind, KINDS[kind].recovery_grace)
        if value is not None:
            return value
        return KINDS[kind].recovery_grace

    def policy(self) -> ProtectionPolicy:
        """The protection rules as the pure code reads them (protection.py), built once."""
        return ProtectionPolicy(
            max_removed_share=self.max_removed_share,
            min_instances=self.min_instances,
            hold_empty=self.hold_empty,
            hold_for=self.hold_for,
            release_share=self.release_share,
            window=self.window,
        )

    @model_validator(mode="after")
    def _hysteresis(self) -> ProtectionSettings:
        if self.release_share > self.max_removed_share:
            raise ValueError(
                f"release_share ({self.release_share:g}) must be at most max_removed_share "
                f"({self.max_removed_share:g})"
            )
        return self


class PeersSettings(Frozen):
    """The other replicas (docs/deployment.md "Several replicas"): a starting replica takes
    what they accepted as its own reference, and a confirmation reaches each of them."""

    # Their admin ports, HOST:PORT; a host that resolves to several addresses names each of
    # them (one name for a headless Service is enough). This replica is skipped.
    addresses: list[Address] = Field(min_length=1)
    # How long a starting replica waits for its peers' answers, at most (the first snapshot
    # waits that long at worst; an unreachable peer usually fails at once).
    wait: Duration = Field(default=5.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """`peers: NAME:PORT` and `peers: [A:PORT, B:PORT]` are `peers: {addresses: ...}`."""
        if isinstance(data, str):
            return {"addresses": [data]}
        if isinstance(data, list):
            return {"addresses": data}
        return data


_ADDRESS_SCHEMA = {"type": "string", "pattern": r"^\S+:[0-9]{1,5}$", "description": "HOST:PORT"}
PEERS_SCHEMA: dict[str, Any] = {
    "anyOf": [
        _ADDRESS_SCHEMA,
        {"type": "array", "items": _ADDRESS_SCHEMA, "minItems": 1},
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["addresses"],
            "properties": {
                "addresses": {"type": "array", "items": _ADDRESS_SCHEMA, "minItems": 1},
                "wait": DURATION_SCHEMA,
            },
        },
        {"type": "null"},
    ],
    "description": "the other replicas' admin ports: HOST:PORT, a list, or {addresses, wait}",
}
"""`peers` in JSON schema, its shorthand forms included (the chart's schema is generated)."""


def demo_registry_path() -> Path:
    """The packaged demo static registry: the embedded default of `mcpserver serve`."""
    return Path(str(resources.files("mcpserver") / "data" / "demo.yaml"))


SinkName = Literal["mcp", "kubernetes"]


def _mcp_only() -> list[SinkName]:
    return ["mcp"]


def _listed(value: object) -> object:
    """`sink: kubernetes` is `sink: [kubernetes]`."""
    return [value] if isinstance(value, str) else value


class Settings(Frozen):
    server: ServerSettings = ServerSettings()
    debounce: DebounceSettings = DebounceSettings()
    startup: StartupSettings = StartupSettings()
    vip: VIPSettings = VIPSettings()
    protection: ProtectionSettings = ProtectionSettings()
    shutdown: ShutdownSettings = ShutdownSettings()
    peers: Annotated[PeersSettings | None, WithJsonSchema(PEERS_SCHEMA)] = None
    # Where each registry's protection memory is kept for the next run (docs/deployment.md "Several
    # replicas": a lone replica restarted during a refill holds as well); unset: nowhere.
    state_dir: ConfigPath | None = None
    # Its files are rewritten at most this often (the first change at once).
    state_write_interval: Duration = Field(default=5.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    merge: Literal["first", "union"] = "first"
    # Where the served set goes: `mcp` (istiod reads it over xDS: the default), `kubernetes`
    # (written into the apiserver: docs/deployment.md "Kubernetes sink"), or both.
    sink: Annotated[list[SinkName], BeforeValidator(_listed)] = Field(
        default_factory=_mcp_only, min_length=1
    )
    kubernetes: KubernetesSinkSettings = KubernetesSinkSettings()
    registries: list[RegistrySettings]

    @field_validator("sink")
    @classmethod
    def _once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a sink is named twice")
        return value

    @field_validator("registries")
    @classmethod
    def _unique(cls, value: list[RegistrySettings]) -> list[RegistrySettings]:
        seen: set[str] = set()
        for registry in value:
            if registry.name in seen:
                raise ValueError(f"registry name {registry.name!r} is used twice")
            seen.add(registry.name)
        return value


def settings_model(kinds: Iterable[str] | None = None) -> type[Settings]:
    """Settings whose registry entries are validated by the kind table's models: every
    kind's, or those of `kinds` only. The other kinds then take part by their tag alone, so
    their packages stay unimported while every message reads as with all of them (an unknown
    kind's lists every kind; an entry's fields are named under its index)."""
    wanted = set(KINDS if kinds is None else kinds)
    return _model_for(tuple(KINDS[k].settings if k in wanted else _tag_only(k) for k in KINDS))


def _kinds_used(data: Mapping[str, Any]) -> set[str]:
    """The table's kinds that the config's registry entries name."""
    entries = data.get("registries")
    if not isinstance(entries, list):
        return set()
    named = (entry.get("kind") for entry in entries if isinstance(entry, dict))
    return {kind for kind in named if isinstance(kind, str) and kind in KINDS}


class _TagOnly(Frozen):
    """A kind no entry names stands in the union as its tag alone; nothing reaches it."""

    @model_validator(mode="before")
    @classmethod
    def _unreachable(cls, data: Any) -> Any:
        raise RuntimeError(f"{cls.__name__}: validated without its kind's model")


@cache
def _tag_only(kind: str) -> type[Frozen]:
    """The stand-in of `kind`: its `kind` literal, for the union to list."""
    model: type[Frozen] = create_model(
        f"Unloaded_{kind}",
        __base__=_TagOnly,
        kind=(Literal[kind], ...),  # type: ignore[arg-type]  # the tag, known at run time
    )
    return model


@lru_cache(maxsize=8)
def _model_for(models: tuple[type[Frozen], ...]) -> type[Settings]:
    entry = Annotated[Union[models], Field(discriminator="kind")]  # type: ignore[valid-type]  # built from the table at run time  # noqa: UP007
    model: type[Settings] = create_model(
        "Settings",
        __base__=Settings,
        registries=(list[entry], ...),
    )
    return model


class EnvError(ValueError):
    """An MCPSERVER_ variable that names no setting, or a list index out of reach."""


def apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Apply overrides: MCPSERVER_SERVER__LISTEN=0.0.0.0:15051 sets server.listen and
    MCPSERVER_REGISTRIES__0__HOSTS sets registries[0].hosts; values are read as YAML.

    Every variable with our prefix must name a setting (MCPSERVER_CONFIG excepted; test
    switches use their own prefix): a typo is an error, not an override silently ignored.
    Returns the dotted path each variable set, to name the variable in validation errors.
    """
    origins: dict[str, str] = {}
    for key in sorted(env):
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV:
            continue
        path = [part.lower() for part in key[len(ENV_PREFIX) :].split("__")]
        if not all(path) or path[0] not in Settings.model_fields:
            raise EnvError(
                f"{key}: names no setting (settings: {', '.join(Settings.model_fields)})"
            )
        node: Any = data
        dotted = ""
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            value = yaml.safe_load(env[key]) if last else None
            if isinstance(node, list):
                if not part.isdigit() or int(part) > len(node):
                    raise EnvError(
                        f"{key}: {dotted} has {len(node)} entries; {part!r} is not an index "
                        f"from 0 to {len(node)}"
                    )
                index = int(part)
                dotted += f"[{index}]"
                if index == len(node):
                    node.append({} if not last else value)
                if last:
                    node[index] = value
                elif not isinstance(node[index], dict | list):
                    node[index] = {}
                node = node[index]
                continue
            if not isinstance(node, dict):
                raise EnvError(f"{key}: {dotted} is not a section")
            dotted += f".{part}" if dotted else part
            if last:
                node[part] = value
            else:
                child = node.get(part)
                if not isinstance(child, dict | list):
                    child = [] if path[depth + 1].isdigit() else {}
                    node[part] = child
                node = child
        origins[dotted] = key
    return origins


def describe(error: ValidationError, origins: Mapping[str, str] | None = None) -> list[str]:
    """Turn pydantic's errors into `field.path: message` lines an operator can act on."""
    lines = []
    for item in error.errors():
        text = ""
        after_index = False
        for loc in item["loc"]:
            if isinstance(loc, int):
                text += f"[{loc}]"
                after_index = True
                continue
            if after_index and loc in KINDS:  # the discriminated union adds the kind
                after_index = False
                continue
            after_index = False
            text += f".{loc}" if text else str(loc)
        message = item["msg"].removeprefix("Value error, ")
        where = text or "(top level)"
        origin = next(
            (v for k, v in (origins or {}).items() if where == k or where.startswith(k + ".")),
            None,
        )
        lines.append(f"{where}: {message}" + (f" (from {origin})" if origin else ""))
    return lines


def load_settings(
    path: Path | None, env: Mapping[str, str] | None = None, *, offline: bool = False
) -> Settings:
    """Read, override and validate; raise ConfigError naming every bad field.

    With no file at all, the packaged demo registry is served (README quick start); a file
    must list its registries (`registries: []` explicitly serves nothing).
    """
    data: dict[str, Any]
    base: Path = Path.cwd()
    if path is None:
        data = {
            "registries": [{"kind": "static", "name": "demo", "path": str(demo_registry_path())}]
        }
    else:
        try:
            raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
        except OSError as err:
            raise ConfigError([f"{path}: cannot read: {failure.describe(err)}"]) from None
        except (UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError([f"{path}: {failure.describe(err)}"]) from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError([f"{path}: (top level): expected a mapping"])
        data = raw
        base = path.resolve().parent
    try:
        origins = apply_env(data, env or {})
    except EnvError as err:
        raise ConfigError([str(err)]) from None
    try:
        context = {BASE_CONTEXT: base, OFFLINE_CONTEXT: offline}
        model = settings_model(_kinds_used(data))
        return model.model_validate(data, context=context)
    except ValidationError as err:
        problems = [
            REGISTRIES_REQUIRED if line == "registries: Field required" else line
            for line in describe(err, origins)
        ]
        raise ConfigError(problems) from None


REGISTRIES_REQUIRED = (
    "registries: required: list the registries to serve (`registries: []` serves nothing; "
    "only `mcpserver serve` with no config file at all serves the demo)"
)
