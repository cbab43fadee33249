"""Running a real Envoy as an Istio ingress gateway node fed by istiod."""

from __future__ import annotations

import json
import signal
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from testbed.ports import free_port
from testbed.process import Process, terminate


def bootstrap(node_id: str, istiod_port: int, admin_port: int) -> dict[str, object]:
    """An ADS-only bootstrap: everything else comes from istiod."""
    return {
        "node": {
            "id": node_id,
            "cluster": "istio-ingressgateway.istio-system",
            "metadata": {
                "NAMESPACE": "istio-system",
                "CLUSTER_ID": "Kubernetes",
                "LABELS": {"istio": "ingressgateway"},
                "ISTIO_VERSION": "1.30.0",
            },
        },
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds-grpc",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds-grpc",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": istiod_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }


@dataclass
class Envoy:
    binary: Path
    workdir: Path
    istiod_port: int
    admin_port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    def start(self) -> None:
        config = self.workdir / "envoy.yaml"
        node = "router~127.0.0.1~gateway.istio-system~istio-system.svc.cluster.local"
        config.write_text(yaml.safe_dump(bootstrap(node, self.istiod_port, self.admin_port)))
        command = [
            str(self.binary),
            "-c",
            str(config),
            "--concurrency",
            "1",
            "--base-id",
            str(self.admin_port),
            "-l",
            "info",
        ]
        self.process = Process(command, self.log_path, fresh_log=True)

    def stats(self) -> dict[str, int]:
        url = f"http://127.0.0.1:{self.admin_port}/stats?format=json"
        with urllib.request.urlopen(url, timeout=5) as response:
            data = json.loads(response.read())
        return {s["name"]: s.get("value", 0) for s in data["stats"] if "value" in s}

    def config_dump(self) -> str:
        url = f"http://127.0.0.1:{self.admin_port}/config_dump"
        with urllib.request.urlopen(url, timeout=5) as response:
            body: bytes = response.read()
            return body.decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        terminate(self.process, signal.SIGTERM, 10)
        self.process = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_admin(self, within: float = 30.0) -> None:
        assert self.process is not None, "envoy not started"
        self.process.wait_ready("envoy's admin", self.stats, within)
