"""A real ZooKeeper 3.8 server (Debian's `zookeeper` package) on free loopback ports: alone,
as a member of an ensemble, with a TLS secure client port (ZooKeeper's Netty server) and
with SASL (a JAAS `Server` section using DigestLoginModule)."""

from __future__ import annotations

import base64
import hashlib
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from testbed.builds import missing
from testbed.ports import accepts, free_port
from testbed.process import Process, terminate

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
ZOOKEEPER_CONF = Path("/etc/zookeeper/conf")
LOGGER_JAR = Path("/usr/share/java/slf4j-simple.jar")  # ZooKeeper's log to its stderr
# The Netty server (TLS) needs these, which the Debian jar's manifest leaves out; they come
# with libnetty-java, a dependency of the `zookeeper` package.
NETTY_JARS = [
    Path(f"/usr/share/java/netty-{name}.jar")
    for name in ("codec", "resolver", "transport-native-unix-common")
]
SUPER_PASSWORD = "super-secret"


def super_digest(password: str = SUPER_PASSWORD) -> str:
    """`super:<base64 sha1>`, as DigestAuthenticationProvider.superDigest wants it."""
    digest = hashlib.sha1(f"super:{password}".encode(), usedforsecurity=False).digest()
    return "super:" + base64.b64encode(digest).decode()


@dataclass(frozen=True)
class ServerTLS:
    """PEM files for the secure client port: the server's key and certificate chain in one
    file (ZooKeeper's PEM key store), and the CA its clients' certificates must chain to."""

    keystore: Path
    truststore: Path
    client_auth: str = "need"  # need, want or none


@dataclass
class ZooKeeper:
    workdir: Path
    port: int = field(default_factory=free_port)
    secure_port: int | None = None  # with `tls`
    tls: ServerTLS | None = None
    sasl_users: dict[str, str] | None = None  # DigestLoginModule's user_<name>="<password>"
    # an ensemble member: its id and every member's `server.N=...` line
    server_id: int = 0
    members: list[str] = field(default_factory=list)
    read_only: bool = False  # readonlymode.enabled: serve reads without a quorum
    # localSessionsEnabled: sessions local to the server that made them; a read-only server
    # makes none otherwise (it cannot write a global session)
    local_sessions: bool = False
    tick_ms: int = 500
    process: Process | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secure_address(self) -> str:
        assert self.secure_port is not None
        return f"127.0.0.1:{self.secure_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "zookeeper.log"

    def launch(self) -> None:
        """Start the JVM and return at once (`wait_serving` waits)."""
        java = shutil.which("java")
        if java is None or not ZOOKEEPER_JAR.exists():
            missing("ZooKeeper 3.8 (Debian package `zookeeper`) and a Java runtime")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"tickTime={self.tick_ms}",
            f"dataDir={data}",
            f"clientPort={self.port}",
            "clientPortAddress=127.0.0.1",
            "admin.enableServer=false",
            "minSessionTimeout=1000",
            "maxSessionTimeout=60000",
            "4lw.commands.whitelist=ruok,srvr,isro,cons",
        ]
        properties = {"zookeeper.DigestAuthenticationProvider.superDigest": super_digest()}
        main = "org.apache.zookeeper.server.ZooKeeperServerMain"
        if self.members:
            (data / "myid").write_text(f"{self.server_id}\n")
            lines += ["initLimit=10", "syncLimit=4", *self.members]
            main = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
        if self.local_sessions:
            lines += ["localSessionsEnabled=true", "localSessionsUpgradingEnabled=true"]
        if self.read_only:
            properties["readonlymode.enabled"] = "true"
        if self.tls is not None:
            if self.secure_port is None:
                self.secure_port = free_port()
            lines.append(f"secureClientPort={self.secure_port}")
            lines.append("secureClientPortAddress=127.0.0.1")
            properties |= {
                "zookeeper.serverCnxnFactory": "org.apache.zookeeper.server.NettyServerCnxnFactory",
                "zookeeper.ssl.keyStore.location": str(self.tls.keystore),
                "zookeeper.ssl.keyStore.type": "PEM",
                "zookeeper.ssl.trustStore.location": str(self.tls.truststore),
                "zookeeper.ssl.trustStore.type": "PEM",
                "zookeeper.ssl.clientAuth": self.tls.client_auth,
            }
        if self.sasl_users is not None:
            jaas = self.workdir / "jaas.conf"
            users = "\n".join(f'    user_{u}="{p}"' for u, p in self.sasl_users.items())
            jaas.write_text(
                "Server {\n    org.apache.zookeeper.server.auth.DigestLoginModule required\n"
                f"{users};\n}};\n"
            )
            properties["java.security.auth.login.config"] = str(jaas)
            properties["zookeeper.authProvider.sasl"] = (
                "org.apache.zookeeper.server.auth.SASLAuthenticationProvider"
            )
        config = self.workdir / "zoo.cfg"
        config.write_text("\n".join(lines) + "\n")
        classpath = (ZOOKEEPER_JAR, ZOOKEEPER_CONF, LOGGER_JAR, *NETTY_JARS)
        command = [
            str(java),
            "-Xmx256m",
            "-XX:TieredStopAtLevel=1",
            *(f"-D{k}={v}" for k, v in properties.items()),
            "-cp",
            ":".join(str(p) for p in classpath if p.exists()),
            main,
            str(config),
        ]
        self.process = Process(command, self.log_path)

    def start(self, within: float = 60.0) -> None:
        self.launch()
        self.wait_serving(within)

    def wait_serving(self, within: float = 60.0) -> None:
        assert self.process is not None, "ZooKeeper not launched"
        self.process.wait_ready("ZooKeeper", self.serving, within, every=0.05)

    def four_letter(self, word: str, timeout: float = 2.0) -> str:
        """A four-letter word on the plaintext client port ("" if it does not answer)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as conn:
                conn.sendall(word.encode())
                reply = bytearray()
                while chunk := conn.recv(4096):
                    reply += chunk
        except OSError:
            return ""
        return reply.decode(errors="replace")

    def serving(self) -> bool:
        """ZooKeeper accepts TCP before it serves; `srvr` says whether it serves yet (a
        client that connects too early waits a whole connect timeout before retrying); a
        member serves once it leads or follows (or, read-only, once it serves reads)."""
        if not accepts(self.port):
            return False
        return self.mode() != ""

    def mode(self) -> str:
        """standalone, leader, follower, read-only, or "" while it does not serve."""
        reply = self.four_letter("srvr")
        if not reply.startswith("Zookeeper version"):
            return ""
        for line in reply.splitlines():
            if line.startswith("Mode:"):
                return line.partition(":")[2].strip()
        return ""

    def secure_serving(self) -> bool:
        return self.secure_port is not None and accepts(self.secure_port)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        terminate(self.process, signal.SIGKILL, 5)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a frozen server cannot stop
        terminate(self.process, signal.SIGTERM, 15)
        self.process = None


class Ensemble:
    """Three ZooKeeper servers on loopback forming one ensemble (QuorumPeerMain), read-only
    mode enabled, short ticks so elections and failure detection take seconds."""

    def __init__(
        self, workdir: Path, size: int = 3, tick_ms: int = 300, local_sessions: bool = False
    ) -> None:
        ports = [(free_port(), free_port()) for _ in range(size)]
        members = [
            f"server.{i + 1}=127.0.0.1:{quorum}:{election}"
            for i, (quorum, election) in enumerate(ports)
        ]
        self.servers = [
            ZooKeeper(
                workdir / f"zk{i + 1}",
                server_id=i + 1,
                members=members,
                read_only=True,
                tick_ms=tick_ms,
                local_sessions=local_sessions,
            )
            for i in range(size)
        ]

    @property
    def hosts(self) -> str:
        return ",".join(s.address for s in self.servers)

    def __iter__(self) -> Iterator[ZooKeeper]:
        return iter(self.servers)

    def by_address(self, address: str) -> ZooKeeper:
        return next(s for s in self.servers if s.address == address)

    def start(self, within: float = 90.0) -> None:
        for server in self.servers:
            if server.process is None:
                server.launch()
        for server in self.servers:
            server.wait_serving(within)
        self.wait_quorum(within)

    def wait_quorum(self, within: float = 60.0) -> None:
        """Every running member leads or follows."""
        deadline = time.monotonic() + within
        while True:
            modes = [s.mode() for s in self.servers if s.process is not None]
            if all(m in ("leader", "follower") for m in modes):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no quorum: {modes}")
            time.sleep(0.1)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def make_keystore(certs: dict[str, Path], name: str = "server") -> Path:
    """ZooKeeper's PEM key store: the private key and the certificate in one file."""
    keystore = certs[name].parent / f"{name}-keystore.pem"
    keystore.write_text(certs[f"{name}-key"].read_text() + certs[name].read_text())
    return keystore


def tls_handshake_ok(port: int, certs: dict[str, Path]) -> bool:
    """Whether a TLS client with our test client certificate completes a handshake on the
    port (the secure port accepts TCP before its TLS server is up)."""
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    context.load_cert_chain(str(certs["client"]), str(certs["client-key"]))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
        ):
            conn.sendall(b"ruok")
            return conn.recv(4) == b"imok"
    except (OSError, ssl.SSLError):
        return False
