"""A real Nacos-protocol server for the tests: r-nacos, built from crates.io and cached.

No official Nacos server is published to a registry this project can reach; r-nacos (a Rust
server speaking Nacos' HTTP v1 API and its 2.x gRPC protocol) is on crates.io. It is built
once per version with `cargo install` into a temporary root and moved atomically into the
cache (`~/.cache/mcpserver/rnacos-<version>/rnacos`), under the same file lock as the other
builds. It binds loopback only (RNACOS_SDK_HOST), its console is off, and its data dir is the
test's own.

Where r-nacos differs from Nacos, the tests do not rely on it: the instance list is asked
with `healthyOnly=false`, and "mark unhealthy" keeps one healthy instance (r-nacos, like
Nacos' protect threshold, returns all instances as healthy when none is).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcpserver.registry.nacos.client import Connection
from testbed.builds import CACHE, locked, missing
from testbed.ports import free_port
from testbed.process import Process, terminate

RNACOS_VERSION = "0.8.8"
RNACOS_STARTS = 3  # attempts to start r-nacos (see RNacos.start)
ADMIN = ("admin", "nacos-test-password")
PROBE_NAMESPACE = "mcpserver-start-probe"  # created and deleted once r-nacos answers


class PanicError(Exception):
    """r-nacos logged a panic while starting: it will not answer, and is started again."""


def rnacos_binary() -> Path:
    """The r-nacos binary, built once per version into the cache.

    Built unoptimised (`--debug`, without debug info): about 9 CPU-minutes cold against 25
    for the release profile (most of a cold CI run's Rust time), and the tests ask r-nacos
    for little work."""
    target = CACHE / f"rnacos-{RNACOS_VERSION}-dev" / "rnacos"
    if target.exists():
        return target
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    if not Path(cargo).exists():
        missing("cargo (needed to build r-nacos from crates.io)")
    with locked("rnacos"):
        if target.exists():
            return target
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="rnacos-build-") as root:
            command = [cargo, "install", "rnacos", "--version", RNACOS_VERSION, "--debug"]
            done = subprocess.run(
                [*command, "--root", root],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "CARGO_PROFILE_DEV_DEBUG": "0"},
            )
            if done.returncode != 0:
                missing(f"r-nacos {RNACOS_VERSION} build failed:\n{done.stderr[-4000:]}")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            shutil.copy2(Path(root) / "bin" / "rnacos", partial)
            partial.replace(target)
        print(f"built r-nacos in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return target


def _free_pair() -> int:
    """An HTTP port whose gRPC port (+1000, Nacos' rule) is free too."""
    for _ in range(50):
        port = free_port()
        if port + 1000 < 65536:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 1000))
                return port
            except OSError:
                continue
    raise AssertionError("no free pair of ports")


@dataclass
class RNacos:
    """One r-nacos server on loopback; restartable on the same ports and data dir."""

    binary: Path
    workdir: Path
    auth: bool = False
    http_port: int = field(default_factory=_free_pair)
    process: Process | None = None
    _token: str = ""

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_port(self) -> int:
        return self.http_port + 1000

    def start(self, within: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(self.workdir),
            "RUST_LOG": "warn",
            "RNACOS_SDK_HOST": "127.0.0.1",  # loopback only, HTTP and gRPC
            "RNACOS_CONSOLE_HOST": "127.0.0.1",
            "RNACOS_HTTP_CONSOLE_PORT": "0",  # no console
            "RNACOS_HTTP_PORT": str(self.http_port),
            "RNACOS_GRPC_PORT": str(self.grpc_port),
            "RNACOS_RAFT_NODE_ADDR": f"127.0.0.1:{self.grpc_port}",
            "RNACOS_DATA_DIR": str(self.workdir / "data"),
            "RNACOS_ENABLE_METRICS": "false",
            # persistent instances at made-up addresses must not be probed unhealthy
            "RNACOS_NAMING_PERPETUAL_INSTANCE_PROBE_INTERVAL_SECOND": "0",
            # an ephemeral instance whose heartbeats stop is unhealthy after 2 s (Nacos: 15 s)
            "RNACOS_NAMING_HEALTH_TIMEOUT_SECOND": "2",
            "RNACOS_NAMING_INSTANCE_TIMEOUT_SECOND": "600",
            "RNACOS_ENABLE_OPEN_API_AUTH": "true" if self.auth else "false",
            "RNACOS_INIT_ADMIN_USERNAME": ADMIN[0],
            "RNACOS_INIT_ADMIN_PASSWORD": ADMIN[1],
        }
        fresh = not (self.workdir / "data").exists()
        deadline = time.monotonic() + within
        # r-nacos 0.8.8 sometimes panics in a raft thread while it creates the admin user on
        # a fresh data dir ("raftapply.rs: called `Option::unwrap()` on a `None` value"),
        # then lives on without answering: start it again, from a fresh dir if it was one
        for attempt in range(1, RNACOS_STARTS + 1):
            if self._start_once(env, deadline):
                return
            terminate(self.process, grace=5)
            if attempt == RNACOS_STARTS:
                raise AssertionError(
                    "r-nacos did not answer:\n" + self.log_path.read_text()[-3000:]
                )
            if fresh:
                shutil.rmtree(self.workdir / "data", ignore_errors=True)

    @property
    def log_path(self) -> Path:
        return self.workdir / "rnacos.log"

    def _start_once(self, env: dict[str, str], deadline: float) -> bool:
        """Start the process; True once it answers, False if it panicked or ran out of time
        (an exit fails at once)."""
        # cwd is the work dir: r-nacos reads a `.env` from its working directory
        process = self.process = Process(
            [str(self.binary)], self.log_path, cwd=self.workdir, env=env
        )
        self._token = ""
        try:
            process.wait_ready("r-nacos", self._answers, deadline - time.monotonic(), every=0.05)
        except PanicError:
            return False
        except AssertionError:
            if process.poll() is not None:
                raise
            return False
        return self._actors_alive(deadline)

    def _answers(self) -> bool:
        """Whether r-nacos answers its HTTP API; PanicError once it has logged a panic since
        this start (it lives on then, never answering)."""
        assert self.process is not None
        try:
            self.request("GET", "/nacos/v1/ns/service/list", pageNo="1", pageSize="1")
        except OSError:
            if "panicked at" in self.process.output():
                raise PanicError from None
            raise
        return True

    def _actors_alive(self, deadline: float) -> bool:
        """Whether the namespace actor lives: r-nacos 0.8.8 now and then starts with it dead
        (every namespace write then answers 500 "Mailbox has closed", nothing logged), which
        a namespace created and deleted again shows; then it is started again."""
        for method in ("POST", "DELETE"):
            form = {"customNamespaceId": PROBE_NAMESPACE, "namespaceName": PROBE_NAMESPACE}
            if method == "DELETE":
                form = {"namespaceId": PROBE_NAMESPACE}
            token = self.token()
            query = "?" + urllib.parse.urlencode({"accessToken": token}) if token else ""
            while True:
                request = urllib.request.Request(
                    f"{self.address}/nacos/v1/console/namespaces{query}",
                    data=urllib.parse.urlencode(form).encode(),
                    method=method,
                )
                try:
                    with urllib.request.urlopen(request, timeout=10) as reply:
                        reply.read()
                    break
                except urllib.error.HTTPError as err:
                    if b"Mailbox has closed" in err.read() or time.monotonic() > deadline:
                        return False
                    time.sleep(0.2)  # a raft write not settled yet: again
        return True

    def stop(self) -> None:
        terminate(self.process, grace=10)
        self.process = None

    def token(self) -> str:
        if not self.auth:
            return ""
        if not self._token:
            form = urllib.parse.urlencode({"username": ADMIN[0], "password": ADMIN[1]}).encode()
            with urllib.request.urlopen(
                self.address + "/nacos/v1/auth/login", data=form, timeout=5
            ) as reply:
                self._token = json.loads(reply.read())["accessToken"]
        return self._token

    def request(self, method: str, path: str, **params: str) -> Any:
        token = self.token()
        if token:
            params["accessToken"] = token
        url = f"{self.address}{path}?{urllib.parse.urlencode(params)}"
        request = urllib.request.Request(url, method=method)
        with urllib.request.urlopen(request, timeout=10) as reply:
            text = reply.read().decode()
        try:
            return json.loads(text)
        except ValueError:
            return text

    def register(
        self,
        service: str,
        ip: str,
        port: int = 8080,
        *,
        group: str = "DEFAULT_GROUP",
        namespace: str = "public",
        weight: float = 1.0,
        healthy: bool = True,
        enabled: bool = True,
        metadata: dict[str, str] | None = None,
        cluster: str = "DEFAULT",
    ) -> None:
        """A persistent instance (it needs no heartbeat, and survives a server restart)."""
        self.request(
            "POST",
            "/nacos/v1/ns/instance",
            serviceName=service,
            groupName=group,
            namespaceId=namespace,
            ip=ip,
            port=str(port),
            weight=str(weight),
            healthy=str(healthy).lower(),
            enabled=str(enabled).lower(),
            ephemeral="false",
            clusterName=cluster,
            metadata=json.dumps(metadata or {}),
        )

    def deregister(
        self,
        service: str,
        ip: str,
        port: int = 8080,
        *,
        group: str = "DEFAULT_GROUP",
        namespace: str = "public",
        cluster: str = "DEFAULT",
    ) -> None:
        self.request(
            "DELETE",
            "/nacos/v1/ns/instance",
            serviceName=service,
            groupName=group,
            namespaceId=namespace,
            ip=ip,
            port=str(port),
            ephemeral="false",
            clusterName=cluster,
        )

    def beat(self, service: str, ip: str, port: int = 8080) -> None:
        """One heartbeat of an ephemeral instance (the 1.x client sends one every 5 s)."""
        beat = {"serviceName": service, "ip": ip, "port": port, "cluster": "DEFAULT"}
        self.request(
            "PUT",
            "/nacos/v1/ns/instance/beat",
            serviceName=service,
            ip=ip,
            port=str(port),
            ephemeral="true",
            beat=json.dumps(beat),
        )


class Heartbeats:
    """Ephemeral instances registered over HTTP and kept healthy by heartbeats, as a 1.x
    client keeps them; stopping one's beats makes Nacos mark it unhealthy."""

    def __init__(self, server: RNacos, service: str) -> None:
        self.server = server
        self.service = service
        self.beating: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def add(self, ip: str) -> None:
        await asyncio.to_thread(
            self.server.request,
            "POST",
            "/nacos/v1/ns/instance",
            serviceName=self.service,
            ip=ip,
            port="8080",
            ephemeral="true",
        )
        self.beating.add(ip)
        if self._task is None:
            self._task = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            for ip in sorted(self.beating):
                await asyncio.to_thread(self.server.beat, self.service, ip)
            await asyncio.sleep(0.3)  # a heartbeat period, not a wait for a condition

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def start_rnacos(workdir: Path, *, auth: bool = False) -> RNacos:
    server = RNacos(rnacos_binary(), workdir, auth=auth)
    server.start()
    return server


async def ephemeral_instance(
    server: RNacos, service: str, ip: str, port: int = 8080, **metadata: str
) -> Connection:
    """An ephemeral instance registered over gRPC, as Nacos 2 SDKs do: it lives as long as
    the returned connection (close it and Nacos removes the instance)."""
    connection = Connection(
        f"127.0.0.1:{server.grpc_port}", "public", lambda _: None, token=_token_of(server)
    )
    await connection.open()
    await connection.request(
        "InstanceRequest",
        {
            "module": "naming",
            "namespace": "public",
            "serviceName": service,
            "groupName": "DEFAULT_GROUP",
            "type": "registerInstance",
            "instance": {
                "ip": ip,
                "port": port,
                "weight": 1.0,
                "healthy": True,
                "enabled": True,
                "ephemeral": True,
                "clusterName": "DEFAULT",
                "serviceName": service,
                "metadata": metadata,
            },
        },
    )
    return connection


def _token_of(server: RNacos) -> Callable[[], Awaitable[str]] | None:
    if not server.auth:
        return None

    async def token() -> str:
        return await asyncio.to_thread(server.token)

    return token
