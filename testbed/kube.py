"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kubectl.

Our users run istiod in Kubernetes with `configSources: [xds://mcpserver, k8s://]`: their
VirtualServices and DestinationRules live in the apiserver and must work on the hosts we serve,
and the README promises that nothing of ours is stored there. This module runs the real thing
(built from the Go module proxy by real.py) so the tests can hold both to account: the
apiserver writes an audit log of every write request, and each client has its own token, so a
test can say exactly what istiod wrote.
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.builds import KubeBinaries
from testbed.ports import free_port
from testbed.process import Process, tail, terminate

ADMIN_TOKEN = "mcptest-admin-token"  # the tests' own kubectl
ISTIOD_TOKEN = "mcptest-istiod-token"  # istiod, so the audit log can tell its writes apart
ISTIOD_USER = "istiod"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
"""


@dataclass
class Etcd:
    binary: Path
    workdir: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "etcd.log"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        command = [
            str(self.binary),
            "--name=mcptest",
            f"--data-dir={self.workdir / 'data'}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=mcptest={peer}",
            "--unsafe-no-fsync",  # test data: durability across power loss is not the point
            "--log-level=warn",
        ]
        self.process = Process(command, self.log_path, die_with_us=True)
        self.process.wait_ready("etcd", self.healthy)

    def healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
            return bool(json.loads(response.read()).get("health") == "true")

    def stop(self) -> None:
        terminate(self.process, signal.SIGTERM, 15)
        self.process = None


@dataclass
class KubeApiserver:
    binary: Path
    workdir: Path
    etcd_url: str
    port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "kube-apiserver.log"

    @property
    def audit_path(self) -> Path:
        return self.workdir / "audit.jsonl"

    @property
    def cert(self) -> Path:
        return self.workdir / "serving.crt"

    def credentials(self) -> None:
        """A self-signed serving certificate for 127.0.0.1, a service-account signing key, one
        static token per client, and the audit policy."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        key = self.workdir / "serving.key"
        commands = [
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-keyout", str(key), "-out", str(self.cert), "-subj", "/CN=kube-apiserver",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ],
            ["openssl", "genrsa", "-out", str(self.workdir / "sa.key"), "2048"],
        ]  # fmt: skip
        for command in commands:
            subprocess.run(command, check=True, capture_output=True)
        (self.workdir / "tokens.csv").write_text(
            f'{ADMIN_TOKEN},mcptest-admin,1,"system:masters"\n{ISTIOD_TOKEN},{ISTIOD_USER},2\n'
        )
        (self.workdir / "audit-policy.yaml").write_text(AUDIT_POLICY)

    def start(self) -> None:
        self.credentials()
        directory = self.workdir
        command = [
            str(self.binary),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--tls-cert-file={self.cert}",
            f"--tls-private-key-file={directory / 'serving.key'}",
            f"--token-auth-file={directory / 'tokens.csv'}",
            "--authorization-mode=AlwaysAllow",
            f"--service-account-key-file={directory / 'sa.key'}",
            f"--service-account-signing-key-file={directory / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/16",
            # no kubelet and no real node address: don't publish the `kubernetes` endpoints
            "--endpoint-reconciler-type=none",
            f"--audit-policy-file={directory / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_path}",
            "--audit-log-mode=blocking",
            f"--cert-dir={directory / 'certs'}",
            "--v=1",
        ]
        self.process = Process(command, self.log_path, die_with_us=True)
        self.process.wait_ready("kube-apiserver", self.ready)

    def ready(self) -> bool:
        request = urllib.request.Request(
            f"{self.url}/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        context = ssl.create_default_context(cafile=str(self.cert))
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError:
            return False

    def stop(self) -> None:
        terminate(self.process, signal.SIGTERM, 15)
        self.process = None

    def kubeconfig(self, path: Path, token: str, user: str) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "mcptest",
                    "cluster": {"server": self.url, "certificate-authority": str(self.cert)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "mcptest", "context": {"cluster": "mcptest", "user": user}}],
            "current-context": "mcptest",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def audit(self) -> list[dict[str, Any]]:
        """Every write request the apiserver has handled (the policy logs nothing else)."""
        if not self.audit_path.exists():
            return []
        events = []
        for line in self.audit_path.read_text().splitlines():
            if line.strip():
                events.append(json.loads(line))
        return events


@dataclass
class Kubectl:
    binary: Path
    kubeconfig: Path

    def run(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        done = subprocess.run(
            [str(self.binary), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout

    def apply(self, manifest: str) -> str:
        return self.run("apply", "-f", "-", stdin=manifest)

    def delete(self, manifest: str) -> str:
        return self.run("delete", "--ignore-not-found", "--wait", "-f", "-", stdin=manifest)

    def ensure_namespace(self, name: str) -> None:
        """Create a namespace if it is not there yet (apply is idempotent)."""
        self.apply(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")

    def items(self, *kinds: str, namespace: str | None = None) -> list[dict[str, Any]]:
        scope = ["-A"] if namespace is None else ["-n", namespace]
        found: list[dict[str, Any]] = json.loads(
            self.run("get", ",".join(kinds), *scope, "-o", "json")
        )["items"]
        return found


PORT_ATTEMPTS = 3


def established(kubectl: Kubectl, within: float) -> None:
    """Wait for every CRD to be established. `kubectl wait` fails at once ("accessor
    error: <nil>") on a CRD the apiserver has not given a status yet, which happens just
    after the apply: then asked again, within the same deadline."""
    deadline = time.monotonic() + within
    while True:
        left = max(1, int(deadline - time.monotonic()))
        try:
            kubectl.run("wait", "--for=condition=established", f"--timeout={left}s", "crd", "--all")
            return
        except AssertionError as err:
            if "accessor error" not in str(err) or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def lost_a_port(log: Path) -> bool:
    return "address already in use" in tail(log, 20000)


def started_on_free_ports(server: Etcd | KubeApiserver, attempt: int) -> bool:
    """Start the server; False if it lost one of its ports to another process and may try
    again on new ones."""
    try:
        server.start()
    except AssertionError:
        server.stop()
        if attempt == PORT_ATTEMPTS or not lost_a_port(server.log_path):
            raise
        return False
    return True


@dataclass
class ControlPlane:
    """etcd + kube-apiserver with Istio's CRDs installed and `istio-system` created."""

    binaries: KubeBinaries
    workdir: Path
    etcd: Etcd | None = None
    apiserver: KubeApiserver | None = None
    startup_seconds: float = 0.0  # etcd and kube-apiserver, until /readyz
    crds_seconds: float = 0.0  # Istio's CRDs applied and established

    def start(self, crds: Path) -> None:
        started = time.monotonic()
        # a free port can be taken again before the server binds it (the port numbers come
        # from the kernel's ephemeral range, which outgoing connections use too): new ports
        for attempt in range(1, PORT_ATTEMPTS + 1):
            etcd = self.etcd = Etcd(self.binaries.etcd, self.workdir / f"etcd-{attempt}")
            if started_on_free_ports(etcd, attempt):
                break
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.apiserver = KubeApiserver(self.binaries.apiserver, self.workdir, etcd.url)
            if started_on_free_ports(self.apiserver, attempt):
                break
        self.startup_seconds = time.monotonic() - started
        kubectl = self.kubectl()
        # server-side: the CRDs are too large for client-side apply's annotation
        kubectl.run("apply", "--server-side", f"--filename={crds}", timeout=120)
        established(kubectl, within=60)
        kubectl.run("create", "namespace", "istio-system")
        self.crds_seconds = time.monotonic() - started - self.startup_seconds

    def stop(self) -> None:
        if self.apiserver is not None:
            self.apiserver.stop()
        if self.etcd is not None:
            self.etcd.stop()

    @property
    def server(self) -> KubeApiserver:
        assert self.apiserver is not None, "control plane not started"
        return self.apiserver

    def kubectl(self) -> Kubectl:
        config = self.server.kubeconfig(self.workdir / "admin.kubeconfig", ADMIN_TOKEN, "admin")
        return Kubectl(self.binaries.kubectl, config)

    def istiod_kubeconfig(self) -> Path:
        return self.server.kubeconfig(self.workdir / "istiod.kubeconfig", ISTIOD_TOKEN, ISTIOD_USER)

    def audit_mark(self) -> int:
        """A point in the audit log: writes_by(after=mark) sees only later requests (the
        control plane is shared by the session's tests)."""
        return len(self.server.audit())

    def writes(self, after: int = 0, user: str | None = None) -> list[dict[str, Any]]:
        """The audit events of write requests after `after`, by `user` if given."""
        return [
            event
            for event in self.server.audit()[after:]
            if event.get("verb") in WRITE_VERBS
            and (user is None or event.get("user", {}).get("username") == user)
        ]
