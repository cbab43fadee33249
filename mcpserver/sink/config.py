"""The Kubernetes sink's settings (`kubernetes:` in the config file), read when `sink`
names `kubernetes`. Defaults are what a replica running in the cluster needs: its service
account's token and CA, the apiserver from the environment Kubernetes gives every pod.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mcpserver.config import ConfigPath, Duration, Frozen

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class KubernetesSinkSettings(Frozen):
    # The apiserver's https URL; unset: the cluster's own (KUBERNETES_SERVICE_HOST and _PORT).
    apiserver: str | None = Field(default=None, pattern=r"^https?://")
    # A bearer token, re-read when it changes (projected service-account tokens rotate).
    token_file: ConfigPath = SERVICE_ACCOUNT / "token"
    # The CA that signed the apiserver's certificate; unset: the service account's.
    ca_file: ConfigPath = SERVICE_ACCOUNT / "ca.crt"
    # The owner label's value (mcpserver.io/owner): one per replica set. Objects without it,
    # or with another value, are never updated or deleted.
    owner: str = Field(default="mcpserver", pattern=DNS_LABEL)
    # Where the Lease that elects the one writing replica lives; unset: this pod's namespace
    # (the service account's namespace file), else "default".
    lease_namespace: str | None = Field(default=None, pattern=DNS_LABEL)
    lease_duration: Duration = Field(default=15.0, gt=0)
    renew_deadline: Duration = Field(default=10.0, gt=0)
    retry_period: Duration = Field(default=2.0, gt=0)
    # Writes (applies and deletes) per second, with bursts of `burst`; `concurrency` in flight.
    writes_per_second: float = Field(default=100.0, gt=0)
    burst: int = Field(default=20, ge=1)
    concurrency: int = Field(default=8, ge=1, le=64)
    # Every `resync`, the leader lists what it owns again and repairs drift (an object edited
    # or deleted by hand).
    resync: Duration = Field(default=600.0, gt=0)

    def lease_name(self) -> str:
        return f"{self.owner}-sink"

    def namespace(self) -> str:
        """The Lease's namespace."""
        if self.lease_namespace:
            return self.lease_namespace
        try:
            return (SERVICE_ACCOUNT / "namespace").read_text().strip() or "default"
        except OSError:
            return "default"


SINK = "kubernetes-sink"
"""What the sink's troubles are filed under on /debug/problems and the status page."""
