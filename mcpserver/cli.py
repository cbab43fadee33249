"""Command line: argument parsing only; builds Settings and hands them to app or the client.

Exit codes: 0 success, 1 runtime failure (e.g. dump could not reach the server, a port in
use), 2 bad configuration or usage, with messages naming each bad field. No path ends in a
traceback: every failure is one line on stderr.

`mcpserver.logs` is imported before anything else: it silences gRPC core's own stderr lines
(GRPC_VERBOSITY), which core reads once, when grpc is first imported.
"""

from __future__ import annotations

# isort: off
from mcpserver import logs, runtime

# isort: on
import argparse
import asyncio
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
from mcpserver.metrics import Metrics, build_labels
from mcpserver.pipeline import BuildInputs, build
from mcpserver.registry.base import RegistryContext, View
from mcpserver.registry.kinds import kind_of
from mcpserver.settings import CONFIG_ENV, ConfigError, Settings, load_settings
from mcpserver.xds.client import IstiodLikeClient
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
    check = command("check-config", "validate a config file; exit 2 naming bad fields")
    check.add_argument("file", type=Path, help="the YAML config file")
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


def check_config(path: Path) -> int:
    try:
        settings = load_settings(path, os.environ)
    except ConfigError as err:
        return _config_failure(err)
    problems = config_problems(settings)
    if problems:
        return _config_failure(ConfigError(problems))
    if not settings.registries:
        print(f"{path}: warning: no registries: istiod would receive empty sets", file=sys.stderr)
    print(f"{path}: ok ({len(settings.registries)} registries)")
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
    return repr(error)


async def dump(
    server: str,
    istio_version: str,
    kind: str,
    output: str,
    within: float,
    ca: Path | None = None,
    server_name: str | None = None,
) -> int:
    type_urls = initial_requests(istio_version)
    async with open_channel(server, ca, server_name) as channel:
        client = IstiodLikeClient(channel, type_urls)
        task = asyncio.create_task(client.run())
        synced = asyncio.create_task(client.wait_for(lambda c: c.synced(), within))
        # whichever comes first: every type answered, or the stream failing (a closed or
        # non-gRPC port fails at once; gRPC knows, no need to wait for the timeout)
        await asyncio.wait((task, synced), return_when=asyncio.FIRST_COMPLETED)
        client.close()
        if not client.synced():
            synced.cancel()
            await asyncio.gather(synced, return_exceptions=True)
            if task.done() and not task.cancelled():
                error = task.exception()
                print(f"dump: stream to {server} failed: {_reason(error)}", file=sys.stderr)
            else:
                print(f"dump: no complete answer from {server} within {within:g}s", file=sys.stderr)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return EXIT_FAILURE
        kinds = ["ServiceEntry", "WorkloadEntry"] if kind == "all" else [kind]
        items = [r.to_dict() for k in kinds for r in client.latest(k)]
        task.cancel()
        await asyncio.gather(task, synced, return_exceptions=True)
    if output == "json":
        print(json.dumps({"items": items}, indent=2, sort_keys=True))
    else:
        print(yaml.safe_dump_all(items, sort_keys=False), end="")
    return 0


def _dump(args: argparse.Namespace) -> int:
    ca: Path | None = getattr(args, "ca", None)
    if ca is not None and not ca.is_file():
        print(f"dump: --ca {ca}: no such file", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure("warning")
    return asyncio.run(
        dump(
            getattr(args, "server", None) or default_server(os.environ),
            args.istio_version,
            args.kind,
            args.output,
            args.timeout,
            ca,
            getattr(args, "server_name", None),
        )
    )


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = _settings(getattr(args, "config", None))
    except ConfigError as err:
        return _config_failure(err)
    log_format: logs.LogFormat = getattr(
        args, "log_format", getattr(settings, "log_format", "text")
    )
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
    try:
        if args.command == "check-config":
            code = check_config(args.file)
        elif args.command == "dump":
            code = _dump(args)
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
