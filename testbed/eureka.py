"""A real Spring Cloud Netflix Eureka server for the tests, and a client that registers
instances the way Eureka's Java client does.

The server is our own tiny Spring Boot application (testbed/eureka: a pom, one
class, its properties; `@EnableEurekaServer` from spring-cloud-starter-netflix-eureka-server),
built with Maven from Maven Central once per content of its sources, then extracted with
Spring Boot's `jarmode=tools` (an exploded class path starts in a fraction of the time of the
nested fat jar) into `~/.cache/mcpserver/eureka-server-<hash>/`, which appears whole or not at
all. It binds 127.0.0.1; every request needs HTTP basic auth (`USER`), as Spring's guide
secures a Eureka server.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.builds import CACHE, HERE, locked, missing, source_digest
from testbed.ports import free_port
from testbed.process import Process, terminate

USER = ("eureka", "eureka-test-password")  # application.properties
JVM = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx256m"]  # starts ~3x faster
DATA_CENTER = {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"}


def eureka_server_jar() -> Path:
    """The test Eureka server, built once per content of its sources, extracted, cached."""
    source = HERE / "eureka"
    home = CACHE / f"eureka-server-{source_digest(source)}"
    jar = home / "eureka-server.jar"
    if jar.exists():
        return jar
    mvn, java = shutil.which("mvn"), shutil.which("java")
    if mvn is None or java is None:
        missing("Maven and a JDK (to build the test Eureka server)")
    assert mvn is not None and java is not None
    with locked("eureka"):
        if jar.exists():
            return jar
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="eureka-build-") as scratch:
            build = Path(scratch) / "src"
            shutil.copytree(source, build, ignore=shutil.ignore_patterns("target"))
            done = subprocess.run(
                [mvn, "-q", "-B", "-DskipTests", "package"],
                cwd=build,
                capture_output=True,
                text=True,
                check=False,
            )
            fat = build / "target" / "eureka-server.jar"
            if done.returncode != 0 or not fat.exists():
                missing(f"Eureka server build failed:\n{(done.stdout + done.stderr)[-4000:]}")
            partial = home.with_name(home.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            done = subprocess.run(
                [
                    java,
                    "-Djarmode=tools",
                    "-jar",
                    str(fat),
                    "extract",
                    "--destination",
                    str(partial),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0 or not (partial / "eureka-server.jar").exists():
                shutil.rmtree(partial, ignore_errors=True)
                missing(f"Eureka server extract failed:\n{(done.stdout + done.stderr)[-4000:]}")
            shutil.rmtree(home, ignore_errors=True)
            partial.replace(home)
        print(f"built the Eureka server in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return jar


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class EurekaServer:
    """One Eureka server on loopback; restartable on the same port (empty: Eureka keeps its
    registry in memory only). `properties` are extra `--key=value` settings."""

    jar: Path
    workdir: Path
    properties: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: Process | None = None
    started_in: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/eureka"

    @property
    def log_path(self) -> Path:
        return self.workdir / "eureka.log"

    def launch(self) -> None:
        """Start the process (`wait_ready` waits for it to answer)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        settings = {
            "server.port": str(self.port),
            # peers on 127.0.0.1 are not "me" (Eureka tells itself apart by host name)
            "eureka.server.my-url": self.url + "/",
            # standalone unless a test names peers: itself (Spring's default would replicate
            # to localhost:8761, whoever listens there)
            "eureka.client.service-url.defaultZone": self.url + "/",
            **self.properties,
        }
        command = [
            shutil.which("java") or "java",
            *JVM,
            "-jar",
            str(self.jar),
            *(f"--{k}={v}" for k, v in settings.items()),
        ]
        self.started_in = time.monotonic()
        self.process = Process(command, self.log_path, cwd=self.workdir, die_with_us=True)

    def wait_ready(self, within: float = 180.0) -> None:
        assert self.process is not None, "Eureka not launched"
        self.process.wait_ready("Eureka", self.apps, within)
        self.started_in = time.monotonic() - self.started_in

    def start(self) -> None:
        """Launch and wait. From async tests, `launch()` on the event loop's thread and
        `wait_ready` in a worker: the kernel's parent-death signal (`dying_with_us`) follows
        the thread that started the process, and a worker thread exits with its loop."""
        self.launch()
        self.wait_ready()

    def stop(self) -> None:
        terminate(self.process, grace=10)
        self.process = None

    # ------------------------------------------------------------------ REST

    def request(
        self, method: str, path: str, body: Any = None, auth: tuple[str, str] | None = USER
    ) -> tuple[int, Any]:
        """(status, decoded JSON body or None); an error status is returned, not raised."""
        headers = {"Accept": "application/json"}
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                text = reply.read()
                return reply.status, json.loads(text) if text.strip() else None
        except urllib.error.HTTPError as err:
            if err.code >= 500 or err.code == 401:
                raise
            return err.code, None

    def apps(self) -> Any:
        status, body = self.request("GET", "/apps")
        assert status == 200, status
        return body

    def register(
        self,
        app: str,
        ip: str,
        port: int | None = 8080,
        *,
        port_enabled: bool = True,
        instance_id: str | None = None,
        host_name: str | None = None,
        status: str = "UP",
        secure_port: int | None = None,
        vip: str | None = None,
        metadata: dict[str, str] | None = None,
        lease: int = 90,
    ) -> str:
        """Register (or re-register: a new lastDirtyTimestamp wins) an instance, as the Java
        client's POST /apps/{APP}; returns its id."""
        ident = instance_id or f"{ip}:{app.lower()}:{port}"
        instance: dict[str, Any] = {
            "instanceId": ident,
            "hostName": host_name or ip,
            "app": app.upper(),
            "ipAddr": ip,
            "status": status,
            "port": {"$": port, "@enabled": str(port_enabled).lower()},
            "securePort": {
                "$": secure_port or 443,
                "@enabled": str(secure_port is not None).lower(),
            },
            "vipAddress": vip or app.lower(),
            "secureVipAddress": vip or app.lower(),
            "dataCenterInfo": DATA_CENTER,
            "leaseInfo": {"renewalIntervalInSecs": max(1, lease // 3), "durationInSecs": lease},
            "metadata": metadata or {},
            "lastDirtyTimestamp": str(now_ms()),
        }
        if port is None:
            del instance["port"]  # Eureka records its default, 7001
        code, _ = self.request("POST", f"/apps/{app.upper()}", {"instance": instance})
        assert code == 204, code
        return ident

    def heartbeat(self, app: str, ident: str) -> int:
        """One renewal (PUT /apps/{APP}/{id}): 200, or 404 when the server does not know the
        instance (the Java client then registers again)."""
        return self.request("PUT", f"/apps/{app.upper()}/{ident}?status=UP")[0]

    def set_status(self, app: str, ident: str, status: str) -> None:
        code, _ = self.request("PUT", f"/apps/{app.upper()}/{ident}/status?value={status}")
        assert code == 200, code

    def clear_status(self, app: str, ident: str) -> None:
        """Remove a status override; the instance is UP again (Spring's `DELETE .../status`)."""
        code, _ = self.request("DELETE", f"/apps/{app.upper()}/{ident}/status?value=UP")
        assert code == 200, code

    def deregister(self, app: str, ident: str) -> None:
        code, _ = self.request("DELETE", f"/apps/{app.upper()}/{ident}")
        assert code == 200, code

    def delta(self) -> Any:
        return self.request("GET", "/apps/delta")[1]
