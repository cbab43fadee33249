"""Running Istio's discovery server against mcpserver, and reading istiod's own surfaces.

The integration tier and bench/istiodcpu.py run the unmodified `pilot-discovery discovery`
against a real kube-apiserver (testbed/kube.py), with the config sources our users
deploy: `xds://` mcpserver, then `k8s://`.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed.ports import accepts, free_port
from testbed.process import Process, terminate


@dataclass
class Istiod:
    """One istiod process; its config sources are mcpserver (xds://), then the apiserver
    that `kubeconfig` names (k8s://)."""

    binary: Path
    workdir: Path
    mcpserver_port: int
    kubeconfig: Path
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    monitoring_port: int = field(default_factory=free_port)
    process: Process | None = None
    starts: int = 0
    started_at: float = 0.0
    ready_seconds: float = 0.0  # from the last start to 15010 accepting
    env: dict[str, str] = field(default_factory=dict)
    """More environment (PILOT_ENABLE_AMBIENT...)."""
    sources: list[dict[str, Any]] | None = None
    """configSources in place of [xds://127.0.0.1:mcpserver_port, k8s://] (an istio-config
    overlay, several shards)."""

    @property
    def log_path(self) -> Path:
        return self.workdir / f"istiod-{self.starts}.log"

    def mesh_config(self) -> Path:
        sources = self.sources or [
            {"address": f"xds://127.0.0.1:{self.mcpserver_port}"},
            {"address": "k8s://"},
        ]
        mesh = {
            "rootNamespace": "istio-system",
            "trustDomain": "cluster.local",
            "configSources": sources,
            # upstream Envoy lacks istio-proxy's stats/metadata-exchange extensions
            "defaultProviders": {"metrics": []},
            "enablePrometheusMerge": False,
            # no pilot-agent, so no SDS: plain-text upstreams instead of auto mTLS
            "enableAutoMtls": False,
            "defaultConfig": {"discoveryAddress": f"127.0.0.1:{self.grpc_port}"},
        }
        path = self.workdir / "mesh.yaml"
        path.write_text(yaml.safe_dump(mesh))
        return path.resolve()

    def start(self) -> None:
        self.starts += 1
        self.started_at = time.monotonic()
        command = [
            str(self.binary),
            "discovery",
            f"--kubeconfig={self.kubeconfig}",
            # everything on loopback; no webhook server, no TLS xDS (no CA, no pilot-agent)
            "--httpsAddr=",
            "--secureGRPCAddr=",
            "--ctrlz_address=127.0.0.1",
            "--ctrlz_port=0",
            "--shutdownDuration=1s",
            f"--meshConfig={self.mesh_config()}",
            f"--grpcAddr=127.0.0.1:{self.grpc_port}",
            f"--httpAddr=127.0.0.1:{self.http_port}",
            f"--monitoringAddr=127.0.0.1:{self.monitoring_port}",
            "--log_output_level=default:info,adsc:debug",
        ]
        env = {
            **os.environ,
            "ENABLE_CA_SERVER": "false",
            "POD_NAMESPACE": "istio-system",
            "PILOT_ENABLE_ANALYSIS": "false",
            # upstream Envoy (the PyPI build) lacks istio-proxy's metadata-exchange filters
            "PILOT_ENABLE_METADATA_EXCHANGE": "false",
            "PILOT_ENABLE_ALPN_FILTER": "false",
            **self.env,
        }
        self.process = Process(command, self.log_path, env=env, fresh_log=True, die_with_us=True)

    def wait_ready(self, within: float = 120.0) -> None:
        """istiod opens 15010 only after every config type is synced (adsc HasSynced)."""
        assert self.process is not None, "istiod not started"
        self.process.wait_ready("istiod", lambda: accepts(self.grpc_port), within)
        self.ready_seconds = time.monotonic() - self.started_at

    def start_ready(self, attempts: int = 3) -> None:
        """start() and wait_ready() (blocking: call it from a thread where a loop must keep
        answering), again on new ports if another process took one of them between
        free_port() and istiod's bind."""
        for attempt in range(1, attempts + 1):
            self.start()
            try:
                self.wait_ready()
                return
            except AssertionError:
                if attempt == attempts or not self.lost_a_port():
                    raise
                self.new_ports()

    def lost_a_port(self) -> bool:
        """Whether the last start failed because another process took one of its ports
        between free_port() and istiod's bind."""
        return self.log_path.exists() and "address already in use" in self.log_path.read_text(
            errors="replace"
        )

    def new_ports(self) -> None:
        self.grpc_port, self.http_port, self.monitoring_port = free_port(), free_port(), free_port()

    def stop(self) -> None:
        terminate(self.process, signal.SIGTERM, 15)
        self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def log(self) -> str:
        return "\n".join(
            (self.workdir / f"istiod-{n}.log").read_text(errors="replace")
            for n in range(1, self.starts + 1)
            if (self.workdir / f"istiod-{n}.log").exists()
        )

    def debug(self, name: str) -> Any:
        url = f"http://127.0.0.1:{self.monitoring_port}/debug/{name}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def configs(self, kind: str = "ServiceEntry") -> dict[str, dict[str, Any]]:
        """`namespace/name` -> config, from /debug/configz (what istiod's store holds)."""
        return {
            f"{c['metadata']['namespace']}/{c['metadata']['name']}": c
            for c in self.debug("configz")
            if c.get("kind") == kind
        }

    def hosts(self) -> set[str]:
        """Service hostnames in istiod's registry (/debug/registryz)."""
        return {s["hostname"] for s in self.debug("registryz")}
