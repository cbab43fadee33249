"""A local AWS Cloud Map API for the tests: moto's server (`moto[server]`, a dev dependency),
and a botocore client that plays the part of the services registering themselves.

moto implements servicediscovery well enough to test against (namespaces, services,
RegisterInstance, custom health, DiscoverInstances with HealthStatus and MaxResults,
DiscoverInstancesRevision), with gaps the tests work around rather than build on:
re-registering an instance id adds a duplicate (tests deregister first), the revision ignores
health changes (the registry's full reconcile catches those), ListNamespaces/ListServices
ignore filters (the registry drops services DiscoverInstances does not find in a namespace),
and no health checker runs (tests set custom health themselves). `INITIAL_NO_AUTH_ACTION_COUNT=0`
makes moto check credentials against its own IAM, where the tests' keys do not exist: that
is how a refused credential is tested.
"""

from __future__ import annotations

import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.config
import botocore.session

from testbed.builds import missing
from testbed.ports import free_port
from testbed.process import Process, terminate

REGION = "us-east-1"
ACCESS_KEY = "AKIAMCPSERVERTEST01"
SECRET_KEY = "mcpserver-test-secret-5f0c1e"  # tests assert it never shows
SESSION_TOKEN = "mcpserver-test-session-token-93ad"  # and this neither


def aws_env(port: int) -> dict[str, str]:
    """Environment for the standard AWS chain in tests: static keys, no files, no IMDS."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    }


def moto_binary() -> Path:
    """moto_server from the virtualenv the tests run in (installed with the dev extras)."""
    beside = Path(sys.executable).parent / "moto_server"
    found = beside if beside.exists() else shutil.which("moto_server")
    if found is None:
        missing("moto_server (pip install -e '.[dev]' installs moto[server])")
    return Path(str(found))


@dataclass
class Moto:
    """One moto server on loopback, its state in memory (gone when it stops)."""

    workdir: Path
    check_auth: bool = False
    port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "moto.log"

    def start(self, within: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.workdir)}
        if self.check_auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        command = [str(moto_binary()), "-H", "127.0.0.1", "-p", str(self.port)]
        self.process = Process(command, self.log_path, cwd=self.workdir, env=env, die_with_us=True)
        self.process.wait_ready("moto_server", self._answers, within, every=0.05)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/moto-api/data.json", timeout=2):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def reset(self) -> None:
        """Forget every namespace and service (moto's reset API): one server per session,
        a clean one per test."""
        request = urllib.request.Request(self.url + "/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        terminate(self.process, grace=10)
        self.process = None


class CloudMap:
    """What the services' side does, through botocore against moto."""

    def __init__(self, server: Moto) -> None:
        self.server = server
        session = botocore.session.Session()
        self.client: Any = session.create_client(
            "servicediscovery",
            region_name=REGION,
            endpoint_url=server.url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=botocore.config.Config(inject_host_prefix=False),
        )
        self.namespaces: dict[str, str] = {}  # name -> id
        self.services: dict[tuple[str, str], str] = {}  # (namespace, service) -> id

    def namespace(self, name: str, dns: bool = False) -> str:
        if dns:
            self.client.create_private_dns_namespace(Name=name, Vpc="vpc-0123456789abcdef0")
        else:
            self.client.create_http_namespace(Name=name)
        found = self.client.list_namespaces()["Namespaces"]
        self.namespaces[name] = next(n["Id"] for n in found if n["Name"] == name)
        return self.namespaces[name]

    def delete_namespace(self, name: str) -> None:
        self.client.delete_namespace(Id=self.namespaces.pop(name))

    def service(self, namespace: str, name: str, custom_health: bool = False) -> str:
        extra: dict[str, Any] = {}
        if custom_health:
            extra["HealthCheckCustomConfig"] = {"FailureThreshold": 1}
        answer = self.client.create_service(
            Name=name, NamespaceId=self.namespaces[namespace], **extra
        )
        self.services[(namespace, name)] = answer["Service"]["Id"]
        return str(answer["Service"]["Id"])

    def delete_service(self, namespace: str, name: str) -> None:
        self.client.delete_service(Id=self.services.pop((namespace, name)))

    def register(self, namespace: str, service: str, instance: str, **attributes: str) -> None:
        self.client.register_instance(
            ServiceId=self.services[(namespace, service)],
            InstanceId=instance,
            Attributes=attributes,
        )

    def deregister(self, namespace: str, service: str, instance: str) -> None:
        self.client.deregister_instance(
            ServiceId=self.services[(namespace, service)], InstanceId=instance
        )

    def health(self, namespace: str, service: str, instance: str, status: str) -> None:
        self.client.update_instance_custom_health_status(
            ServiceId=self.services[(namespace, service)], InstanceId=instance, Status=status
        )
