"""A real ZooKeeper 3.8 server (Debian's `zookeeper` package) on a free loopback port."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.real import accepts, free_port, missing, terminate

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
ZOOKEEPER_CONF = Path("/etc/zookeeper/conf")


@dataclass
class ZooKeeper:
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, within: float = 60.0) -> None:
        java = shutil.which("java")
        if java is None or not ZOOKEEPER_JAR.exists():
            missing("ZooKeeper 3.8 (Debian package `zookeeper`) and a Java runtime")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "zoo.cfg"
        config.write_text(
            "\n".join(
                [
                    "tickTime=500",
                    f"dataDir={data}",
                    f"clientPort={self.port}",
                    "clientPortAddress=127.0.0.1",
                    "admin.enableServer=false",
                    "minSessionTimeout=1000",
                    "maxSessionTimeout=60000",
                    "4lw.commands.whitelist=ruok,srvr",
                ]
            )
            + "\n"
        )
        log = (self.workdir / "zookeeper.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(java),
                "-Xmx256m",
                "-cp",
                f"{ZOOKEEPER_JAR}:{ZOOKEEPER_CONF}",
                "org.apache.zookeeper.server.ZooKeeperServerMain",
                str(config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + within
        while not self.serving():
            if self.process.poll() is not None:
                raise AssertionError((self.workdir / "zookeeper.log").read_text()[-3000:])
            if time.monotonic() > deadline:
                raise AssertionError("ZooKeeper did not start")
            time.sleep(0.05)

    def serving(self) -> bool:
        """ZooKeeper accepts TCP before it serves; `srvr` says whether it serves yet (a
        client that connects too early waits a whole connect timeout before retrying)."""
        if not accepts(self.port):
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                conn.sendall(b"srvr")
                reply = conn.recv(4096)
        except OSError:
            return False
        return reply.startswith(b"Zookeeper version")

    def stop(self) -> None:
        terminate(self.process, signal.SIGTERM, 15)
        self.process = None
