"""A real Consul agent on loopback ports, and a tiny HTTP health endpoint the test controls."""

from __future__ import annotations

import json
import signal
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from testbed.ports import free_port
from testbed.process import Process, terminate


@dataclass
class ConsulAgent:
    binary: Path
    workdir: Path
    persistent: bool = False  # server with a data dir (survives restarts) instead of -dev
    acl_token: str | None = None
    datacenter: str = "dc1"
    extra_hcl: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    http_port: int = field(default_factory=free_port)
    serf_lan: int = field(default_factory=free_port)
    serf_wan: int = field(default_factory=free_port)
    server_port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        command = [
            str(self.binary),
            "agent",
            "-node",
            f"mcpserver-{self.datacenter}",
            "-datacenter",
            self.datacenter,
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
            "-advertise",
            "127.0.0.1",
            f"-http-port={self.http_port}",
            "-dns-port=-1",
            "-grpc-port=-1",
            "-grpc-tls-port=-1",
            f"-serf-lan-port={self.serf_lan}",
            f"-serf-wan-port={self.serf_wan}",
            f"-server-port={self.server_port}",
            "-log-level=warn",
            "-disable-host-node-id",
        ]
        if self.persistent:
            command += [
                "-server",
                "-bootstrap-expect=1",
                f"-data-dir={self.workdir / 'data'}",
                "-ui=false",
            ]
        else:
            command.append("-dev")
        if self.acl_token:
            command.append(
                '-hcl=acl { enabled = true default_policy = "deny" '
                f'tokens {{ initial_management = "{self.acl_token}" }} }}'
            )
        command += [f"-hcl={hcl}" for hcl in self.extra_hcl]
        command += list(self.extra_args)
        return command

    def start(self, within: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = Process(self.command(), self.workdir / "consul.log")
        self.process.wait_ready("Consul (a leader)", self.ready, within)

    def ready(self) -> bool:
        """A leader, and (with ACLs) the management token already accepted: Consul creates
        it a moment after winning the election (until then urllib's HTTPError, 403, is the
        OSError `wait_ready` waits through)."""
        if not self.request("GET", "/v1/status/leader").strip('"'):
            return False
        return not self.acl_token or bool(self.request("GET", "/v1/acl/token/self"))

    def stop(self) -> None:
        terminate(self.process, signal.SIGINT, 20)
        self.process = None

    def request(self, method: str, path: str, body: Any = None) -> str:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.address + path, data=data, method=method)
        if self.acl_token:
            request.add_header("X-Consul-Token", self.acl_token)
        with urllib.request.urlopen(request, timeout=10) as response:
            raw: bytes = response.read()
            return raw.decode()

    def register(self, **service: Any) -> None:
        self.request("PUT", "/v1/agent/service/register", service)

    def deregister(self, service_id: str) -> None:
        self.request("PUT", f"/v1/agent/service/deregister/{service_id}")


class Health:
    """An HTTP health endpoint per instance; the test decides who is healthy."""

    def __init__(self) -> None:
        self.healthy: dict[str, bool] = {}
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()

        async def check(request: web.Request) -> web.Response:
            ok = self.healthy.get(request.match_info["name"], True)
            return web.Response(status=200 if ok else 503)

        app.router.add_get("/health/{name}", check)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/health/{name}"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
