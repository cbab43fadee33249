"""Command line: argument parsing only; builds Settings and hands them to app or the client.

Exit codes: 0 success, 1 runtime failure (e.g. dump could not reach the server), 2 bad
configuration or usage, with messages naming each bad field.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import grpc
import yaml

from mcpserver.app import serve
from mcpserver.registry.static.watcher import file_problems
from mcpserver.settings import ConfigError, Settings, StaticRegistrySettings, load_settings
from mcpserver.xds.client import IstiodLikeClient
from mcpserver.xds.typeurls import initial_requests

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcpserver",
        description="Serve registry services to istiod as Istio resources over MCP-over-xDS.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="run the server (default: the embedded demo registry)")
    run.add_argument("--config", type=Path, default=None, help="YAML config file")
    dump = sub.add_parser("dump", help="connect like istiod, print what arrives, exit")
    dump.add_argument("--server", default="127.0.0.1:15051", help="HOST:PORT of mcpserver")
    dump.add_argument(
        "--istio-version", default="1.29", help="type-URL set to ask for (1.23, 1.29, 1.30)"
    )
    dump.add_argument("--kind", choices=["ServiceEntry", "WorkloadEntry", "all"], default="all")
    dump.add_argument("-o", "--output", choices=["yaml", "json"], default="yaml")
    dump.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for all types")
    dump.add_argument("--ca", type=Path, default=None, help="CA file: connect with TLS")
    dump.add_argument("--server-name", default=None, help="TLS name to verify (default: host)")
    check = sub.add_parser("check-config", help="validate a config file; exit 2 naming bad fields")
    check.add_argument("file", type=Path)
    return parser


def _settings(path: Path | None) -> Settings:
    if path is None and os.environ.get("MCPSERVER_CONFIG"):
        path = Path(os.environ["MCPSERVER_CONFIG"])
    return load_settings(path, os.environ)


def _config_failure(err: ConfigError) -> int:
    for problem in err.problems:
        print(f"config error: {problem}", file=sys.stderr)
    return EXIT_CONFIG


def check_config(path: Path) -> int:
    try:
        settings = load_settings(path, os.environ)
    except ConfigError as err:
        return _config_failure(err)
    problems = [
        p
        for r in settings.registries
        if isinstance(r, StaticRegistrySettings)
        for p in file_problems(r)
    ]
    if problems:
        return _config_failure(ConfigError(problems))
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
        try:
            await client.wait_for(lambda c: c.synced() or task.done(), within)
        except TimeoutError:
            print(f"dump: no complete answer from {server} within {within:g}s", file=sys.stderr)
            return 1
        finally:
            client.close()
        if task.done() and not client.synced():
            print(f"dump: stream to {server} failed: {task.exception()}", file=sys.stderr)
            return 1
        kinds = ["ServiceEntry", "WorkloadEntry"] if kind == "all" else [kind]
        items = [r.to_dict() for k in kinds for r in client.latest(k)]
        task.cancel()
    if output == "json":
        print(json.dumps({"items": items}, indent=2, sort_keys=True))
    else:
        print(yaml.safe_dump_all(items, sort_keys=False), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "dump":
        logging.basicConfig(level=logging.WARNING)
        return asyncio.run(
            dump(
                args.server,
                args.istio_version,
                args.kind,
                args.output,
                args.timeout,
                args.ca,
                args.server_name,
            )
        )
    try:
        settings = _settings(args.config)
    except ConfigError as err:
        return _config_failure(err)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        asyncio.run(serve(settings))
    except OSError as err:
        print(f"mcpserver: {err}", file=sys.stderr)
        return 1
    return 0
