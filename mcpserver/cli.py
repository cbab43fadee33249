"""Command line: argument parsing only; builds Settings and hands them to app or the client.

Exit codes: 0 success, 1 runtime failure (e.g. dump could not reach the server, a port in
use), 2 bad configuration or usage, with messages naming each bad field. No path ends in a
traceback: every failure is one line on stderr.

`mcpserver.logs` is imported before anything else: it silences gRPC core's own stderr lines
(GRPC_VERBOSITY), which core reads once, when grpc is first imported.
"""

from __future__ import annotations

# isort: off
from mcpserver import failure, logs, runtime

# isort: on
import argparse
import asyncio
import gc
import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import grpc
import yaml

from mcpserver.app import StartError, serve
from mcpserver.builder import BuildInputs, build
from mcpserver.config import check_address
from mcpserver.metrics import Metrics, build_labels
from mcpserver.registry.kind import RegistryContext
from mcpserver.registry.kinds import kind_of
from mcpserver.registry.view import View
from mcpserver.settings import CONFIG_ENV, ConfigError, Settings, load_settings
from mcpserver.xds.client import IstiodLikeClient, dump_node
from mcpserver.xds.shards import SHARD_PORTS_HEADER, SHARDS_HEADER, shard_label
from mcpserver.xds.typeurls import initial_requests

EXIT_FAILURE = 1
EXIT_CONFIG = 2
DEFAULT_SERVER = "127.0.0.1:15051"
LISTEN_ENV = "MCPSERVER_SERVER__LISTEN"

EPILOG = f"""\
environment:
  {CONFIG_ENV}=FILE     the config file of `serve` when --config is not given
  MCPSERVER_<SECTION>__<FIELD>=VALUE
                        override any setting (value read as YAML; `__` separates levels,
                        list items by index), e.g. MCPSERVER_SERVER__LISTEN=0.0.0.0:15051,
                        MCPSERVER_REGISTRIES__0__HOSTS=zk1:2181,zk2:2181; a MCPSERVER_
                        variable that names no setting is an error
  GRPC_VERBOSITY        gRPC core's own stderr lines: NONE unless set (ERROR, DEBUG)

exit codes: 0 ok, 1 runtime failure (a port in use, server unreachable), 2 bad config or usage
"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option; the epilog keeps its line breaks."""


def version_text() -> str:
    labels = build_labels()
    return (
        f"mcpserver {labels['version']} (python {labels['python']}, grpcio {labels['grpc']}, "
        f"protobuf {labels['protobuf']})"
    )


def default_server(env: Mapping[str, str]) -> str:
    """Where `dump` connects without --server: $MCPSERVER_SERVER__LISTEN (what `serve` in
    the same environment listens on), a wildcard address turned into loopback."""
    listen = env.get(LISTEN_ENV, "").strip() or DEFAULT_SERVER
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", ""):  # noqa: S104  a listen address, dialled on loopback
        host = "127.0.0.1"
    elif host in ("[::]", "::"):
        host = "[::1]"
    return f"{host}:{port}"


def _istio_version(value: str) -> str:
    if not re.fullmatch(r"1\.\d{1,2}(\.\d+)?", value):
        raise argparse.ArgumentTypeError(
            f"expected an Istio version such as 1.23, 1.29 or 1.30, not {value!r}"
        )
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcpserver",
        description="Serve registry services to istiod as Istio resources over MCP-over-xDS.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EPILOG,
            formatter_class=HelpFormatter,
        )

    # Options whose default depends on the environment or the config file are SUPPRESSed
    # (absent unless given), so the help states the real default instead of "None".
    run = command("serve", "run the server (no config file: the embedded demo)")
    run.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"YAML config file (default: ${CONFIG_ENV}, else the embedded demo)",
    )
    run.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default=argparse.SUPPRESS,
        help="log lines as text or one JSON object per line (default: log_format from the "
        "config, else text)",
    )
    dump = command("dump", "connect like istiod, print what arrives, exit")
    dump.add_argument(
        "--server",
        default=argparse.SUPPRESS,
        help=f"HOST:PORT of mcpserver (default: ${LISTEN_ENV}, else {DEFAULT_SERVER})",
    )
    dump.add_argument(
        "--istio-version",
        default="1.29",
        type=_istio_version,
        help="type-URL set to ask for (1.23, 1.29, 1.30)",
    )
    dump.add_argument(
        "--kind",
        choices=["ServiceEntry", "WorkloadEntry", "all"],
        default="all",
        help="resources to print",
    )
    dump.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml", help="format")
    dump.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for all types")
    dump.add_argument(
        "--ca",
        type=Path,
        default=argparse.SUPPRESS,
        help="CA file: connect with TLS (default: plaintext)",
    )
    dump.add_argument(
        "--server-name",
        default=argparse.SUPPRESS,
        help="TLS name to verify (default: the host of --server)",
    )
    dump.add_argument(
        "--shard",
        default="all",
        help="from a sharded server (server.shards > 1): every shard read from its own port "
        "as istiod reads it (all), or one shard's part (0 to N-1)",
    )
    mesh = command(
        "mesh-config",
        "print the meshConfig.configSources block istiod needs for a config: one xds:// "
        "source per shard, in shard order",
    )
    mesh.add_argument("--config", type=Path, required=True, help="mcpserver's YAML config file")
    mesh.add_argument(
        "--address",
        default=argparse.SUPPRESS,
        help="host istiod dials, e.g. mcpserver.istio-system.svc (default: the host of "
        "server.listen, unless it is a wildcard)",
    )
    mesh.add_argument(
        "--shards",
        type=int,
        default=argparse.SUPPRESS,
        help="the layout to print: 1 (the whole set on server.listen), server.shards or "
        "server.previous_shards (default: server.shards)",
    )
    mesh.add_argument(
        "--ca",
        type=Path,
        default=argparse.SUPPRESS,
        help="with server.tls: the CA that signed mcpserver's certificate, pasted inline as "
        "istiod requires (default: a placeholder to replace)",
    )
    mesh.add_argument(
        "--without-k8s",
        action="store_true",
        help="leave out `k8s://` (istiod then reads no Istio config from the apiserver)",
    )
    check = command("check-config", "validate a config file; exit 2 naming bad fields")
    check.add_argument("file", type=Path, help="the YAML config file")
    check.add_argument(
        "--offline",
        action="store_true",
        help="before a deploy: check everything but that secret and TLS files exist (a pod "
        "mounts them from Secrets)",
    )
    return parser


def _settings(path: Path | None) -> Settings:
    if path is None and os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV])
    return load_settings(path, os.environ)


def _config_failure(err: ConfigError) -> int:
    for problem in err.problems:
        print(f"config error: {problem}", file=sys.stderr)
    return EXIT_CONFIG


def config_problems(settings: Settings) -> list[str]:
    """Everything `serve` would withhold or refuse that can be known without live sources:
    each kind's offline view (static files) parsed, converted and validated exactly as
    `serve` does, every problem on its own line with where it comes from."""
    context = RegistryContext(Metrics(), dict(os.environ))
    problems: list[str] = []
    views: list[View] = []
    where: dict[tuple[str, str], str] = {}
    origins: dict[str, str] = {}
    for entry in settings.registries:
        offline = kind_of(entry).offline
        if offline is None:
            continue
        found = offline(entry, context)
        problems.extend(found.errors)
        if found.view is not None:
            views.append(found.view)
            origins[entry.name] = found.origin or f"registry {entry.name}"
            for key, location in (found.locations or {}).items():
                where[(entry.name, key)] = location
    if not views:
        return problems
    inputs = BuildInputs(
        {r.name: r.keep_when_empty for r in settings.registries}, settings.vip.cidr, settings.merge
    )
    for problem in build(views, inputs).problems:
        key = problem.subject.rpartition(" ")[2]
        location = where.get((problem.registry, key)) or origins.get(
            problem.registry, f"registry {problem.registry}"
        )
        subject = problem.subject if problem.subject not in location else ""
        for message in problem.message.split("; "):
            problems.append(": ".join(x for x in (location, subject, message) if x))
    return problems


def check_config(path: Path, offline: bool = False) -> int:
    try:
        settings = load_settings(path, os.environ, offline=offline)
    except ConfigError as err:
        return _config_failure(err)
    problems = config_problems(settings)
    if problems:
        return _config_failure(ConfigError(problems))
    if not settings.registries:
        print(f"{path}: warning: no registries: istiod would receive empty sets", file=sys.stderr)
    unchecked = "; secret and TLS files not checked (--offline)" if offline else ""
    print(f"{path}: ok ({len(settings.registries)} registries{unchecked})")
    return 0


def open_channel(server: str, ca: Path | None, server_name: str | None) -> grpc.aio.Channel:
    """Plaintext like istiod before 1.26, or TLS SIMPLE (server verified by `ca`)."""
    options: list[tuple[str, object]] = [("grpc.max_receive_message_length", 2**31 - 1)]
    if ca is None:
        return grpc.aio.insecure_channel(server, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    return grpc.aio.secure_channel(server, credentials, options=options)


def _reason(error: BaseException | None) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return "no reason given" if error is None else failure.describe(error)


class DumpError(Exception):
    """`dump` could not get a complete answer; the message says from where and why."""


async def fetch(
    server: str,
    type_urls: tuple[str, ...],
    within: float,
    ca: Path | None,
    server_name: str | None,
    what: str = "",
) -> IstiodLikeClient:
    """One stream opened as istiod opens it, read until every type has been answered."""
    async with open_channel(server, ca, server_name) as channel:
        client = IstiodLikeClient(channel, type_urls, node=dump_node())
        task = asyncio.create_task(client.run())
        synced = asyncio.create_task(client.wait_for(lambda c: c.synced(), within))
        try:
            # whichever comes first: every type answered, or the stream failing (a closed or
            # non-gRPC port fails at once; gRPC knows, no need to wait for the timeout)
            await asyncio.wait((task, synced), return_when=asyncio.FIRST_COMPLETED)
            client.close()
            if not client.synced():
                if task.done() and not task.cancelled():
                    reason = _reason(task.exception())
                    if ca is None and ("Socket closed" in reason or "handshake" in reason):
                        reason += " (a server with server.tls needs --ca: dump dials plaintext)"
                    raise DumpError(f"stream to {server}{what} failed: {reason}")
                raise DumpError(f"no complete answer from {server}{what} within {within:g}s")
            return client
        finally:
            for pending in (task, synced):
                pending.cancel()
            await asyncio.gather(task, synced, return_exceptions=True)


def shard_targets(server: str, client: IstiodLikeClient, shard: str) -> list[tuple[str, str]]:
    """The shards to read as (HOST:PORT, label), from what the server said on its stream:
    every shard of server.shards for `all`, one for a number; [] when the first stream is
    all there is to read (an unsharded server)."""
    shards = int(client.metadata.get(SHARDS_HEADER, "1") or "1")
    ports = [p for p in client.metadata.get(SHARD_PORTS_HEADER, "").split(",") if p]
    if shards == 1 or len(ports) != shards:
        if shard != "all":
            raise DumpError(f"--shard {shard}: {server} serves no shards (server.shards is 1)")
        return []
    host = server.rpartition(":")[0]
    targets = [(f"{host}:{port}", shard_label(shards, k)) for k, port in enumerate(ports)]
    if shard == "all":
        return targets
    if not shard.isdigit() or int(shard) >= shards:
        raise DumpError(f"--shard {shard}: the server has shards 0 to {shards - 1}")
    return [targets[int(shard)]]


async def dump(
    server: str,
    istio_version: str,
    kind: str,
    output: str,
    within: float,
    ca: Path | None = None,
    server_name: str | None = None,
    shard: str = "all",
) -> int:
    """Print what istiod would hold: the set `server` serves, or, from a sharded server,
    every shard of server.shards read from its own port as istiod reads it (`shard`: all,
    or one number)."""
    type_urls = initial_requests(istio_version)
    kinds = ["ServiceEntry", "WorkloadEntry"] if kind == "all" else [kind]
    try:
        first = await fetch(server, type_urls, within, ca, server_name)
        targets = shard_targets(server, first, shard)
        clients = (
            await asyncio.gather(
                *(
                    fetch(address, type_urls, within, ca, server_name, f" (shard {label})")
                    for address, label in targets
                )
            )
            if targets
            else [first]
        )
    except DumpError as err:
        print(f"dump: {err}", file=sys.stderr)
        return EXIT_CONFIG if str(err).startswith("--shard") else EXIT_FAILURE
    items: list[dict[str, object]] = []
    seen: set[tuple[str, str, str]] = set()
    for k in kinds:
        for client in clients:
            for resource in client.latest(k):
                name = (resource.kind, resource.namespace, resource.name)
                if name in seen:  # istiod would hold it twice, from two sources
                    print(f"dump: {'/'.join(name)} is served by two shards", file=sys.stderr)
                    return EXIT_FAILURE
                seen.add(name)
                items.append(resource.to_dict())
    if len(clients) > 1:
        items.sort(key=lambda item: (str(item["kind"]), _name_of(item)))
    if output == "json":
        print(json.dumps({"items": items}, indent=2, sort_keys=True))
    else:
        print(yaml.safe_dump_all(items, sort_keys=False), end="")
    return 0


def _name_of(item: dict[str, object]) -> str:
    metadata = item["metadata"]
    assert isinstance(metadata, dict)
    return f"{metadata['namespace']}/{metadata['name']}"


def _dump(args: argparse.Namespace) -> int:
    ca: Path | None = getattr(args, "ca", None)
    if ca is not None and not ca.is_file():
        print(f"dump: --ca {ca}: no such file", file=sys.stderr)
        return EXIT_CONFIG
    server = getattr(args, "server", None) or default_server(os.environ)
    try:
        check_address(server)
    except ValueError as err:
        print(f"dump: --server {server}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure("warning")
    return asyncio.run(
        dump(
            server,
            args.istio_version,
            args.kind,
            args.output,
            args.timeout,
            ca,
            getattr(args, "server_name", None),
            args.shard,
        )
    )


CA_PLACEHOLDER = (
    "-----BEGIN CERTIFICATE-----\n"
    "REPLACE-WITH-THE-CA-THAT-SIGNED-MCPSERVER-CERTIFICATE\n"
    "-----END CERTIFICATE-----\n"
)


class LiteralText(str):
    """A string YAML writes as a literal block (`|`): PEM stays readable."""


class MeshDumper(yaml.SafeDumper):
    """Safe YAML, with LiteralText as literal blocks."""


def _literal(dumper: yaml.SafeDumper, text: LiteralText) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(text), style="|")


MeshDumper.add_representer(LiteralText, _literal)


def mesh_config(
    settings: Settings,
    address: str | None,
    shards: int | None,
    ca_pem: str | None,
    with_k8s: bool = True,
) -> str:
    """The `configSources:` YAML for layout `shards` (default server.shards) of a config."""
    server = settings.server
    layout = server.shards if shards is None else shards
    if layout not in server.layouts():
        raise ValueError(
            f"--shards {layout}: the config serves layouts "
            f"{', '.join(map(str, server.layouts()))} (1 is the whole set on server.listen)"
        )
    host = address
    if host is None:
        host = server.listen.rpartition(":")[0]
        if host.strip("[]") in ("0.0.0.0", "::", ""):  # noqa: S104  # compared, not bound
            raise ValueError(
                f"server.listen {server.listen} is a wildcard address: give --address, the "
                "name istiod dials (e.g. mcpserver.istio-system.svc)"
            )
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    sources: list[dict[str, object]] = []
    for k in range(layout):
        port = server.shard_listen(layout, k).rpartition(":")[2]
        source: dict[str, object] = {"address": f"xds://{host}:{port}"}
        if server.tls is not None:
            source["tlsSettings"] = {
                "mode": "SIMPLE",
                "caCertificates": LiteralText(ca_pem or CA_PLACEHOLDER),
            }
        sources.append(source)
    if with_k8s:
        sources.append({"address": "k8s://"})
    what = "the whole set" if layout == 1 else f"{layout} shards, one source each, in shard order"
    head = f"# istiod meshConfig for mcpserver: {what}\n"
    if server.tls is not None and ca_pem is None:
        head += "# replace the placeholder with the CA that signed server.tls.cert_file\n"
    return head + yaml.dump({"configSources": sources}, Dumper=MeshDumper, sort_keys=False)


def _mesh_config(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, os.environ)
    except ConfigError as err:
        return _config_failure(err)
    ca: Path | None = getattr(args, "ca", None)
    ca_pem = None
    if ca is not None:
        try:
            ca_pem = ca.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            print(f"mesh-config: --ca {ca}: cannot read: {err}", file=sys.stderr)
            return EXIT_CONFIG
    try:
        text = mesh_config(
            settings,
            getattr(args, "address", None),
            getattr(args, "shards", None),
            ca_pem,
            not args.without_k8s,
        )
    except ValueError as err:
        print(f"mesh-config: {err}", file=sys.stderr)
        return EXIT_CONFIG
    print(text, end="")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = _settings(getattr(args, "config", None))
    except ConfigError as err:
        return _config_failure(err)
    log_format: logs.LogFormat = getattr(args, "log_format", settings.log_format)
    logs.configure(settings.log_level, log_format)
    runtime.tune()
    try:
        clean = asyncio.run(serve(settings, hard_exit=True))
    except StartError as err:
        # logged, not printed: with --log-format json every line on stderr stays JSON
        logging.getLogger("mcpserver").error("%s", err)
        return EXIT_FAILURE
    return 0 if clean else EXIT_FAILURE


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "serve":
        gc.enable()  # paused for the imports (__main__.py); serve's stays paused (runtime.py)
    try:
        if args.command == "check-config":
            code = check_config(args.file, args.offline)
        elif args.command == "dump":
            code = _dump(args)
        elif args.command == "mesh-config":
            code = _mesh_config(args)
        else:
            code = _serve(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`mcpserver dump | head`): say so once, and keep Python's
        # own flush at exit from raising again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("mcpserver: output closed by the reader", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    return code
