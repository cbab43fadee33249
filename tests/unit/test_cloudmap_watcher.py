"""The Cloud Map polling loop against an in-memory Cloud Map: backoff on throttling, the last
view held while calls fail, and how botocore's failures are classified (without a secret in
any message). tests/integration/test_cloudmap.py covers the rest against moto's server."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator
from typing import Any

import botocore.exceptions
import pytest

from mcpserver.metrics import Metrics
from mcpserver.registry.cloudmap import parser as cloudmap_parser
from mcpserver.registry.cloudmap import watcher as watcher_module
from mcpserver.registry.cloudmap.client import (
    CloudMapClient,
    CloudMapError,
    Discovered,
    NamespaceInfo,
    ServiceInfo,
    classify,
)
from mcpserver.registry.cloudmap.config import CloudMapRegistrySettings
from mcpserver.registry.cloudmap.watcher import CloudMapRegistry
from mcpserver.registry.view import Status
from tests.conftest import eventually

pytestmark = pytest.mark.unit

SETTINGS = CloudMapRegistrySettings.model_validate(
    {
        "kind": "cloudmap",
        "name": "aws",
        "region": "us-east-1",
        "list_interval": "50ms",
        "poll_interval": "50ms",
        "reconcile_interval": "1h",
    }
)


class MemoryCloudMap(CloudMapClient):
    """One namespace `shop` with one service `orders`; `throttle` makes ListNamespaces fail
    as AWS does when it throttles, `broken` makes DiscoverInstances* fail."""

    def __init__(self) -> None:
        super().__init__(SETTINGS)
        self.instances = [
            {
                "InstanceId": "i-1",
                "HealthStatus": "HEALTHY",
                "Attributes": {"AWS_INSTANCE_IPV4": "10.0.0.1"},
            }
        ]
        self.throttle = False
        self.broken = False
        self.listed_at: list[float] = []

    async def connect(self) -> None:
        self.region = "us-east-1"

    def _count(self, operation: str) -> None:
        self.calls[operation] = self.calls.get(operation, 0) + 1

    async def namespaces(self) -> list[NamespaceInfo]:
        self._count("ListNamespaces")
        self.listed_at.append(asyncio.get_running_loop().time())
        if self.throttle:
            raise CloudMapError("throttled", "ListNamespaces: ThrottlingException: Rate exceeded")
        return [NamespaceInfo("ns-1", "shop")]

    async def services(self, namespace_id: str) -> list[ServiceInfo]:
        self._count("ListServices")
        return [ServiceInfo("srv-1", "orders", None)]

    async def revision(self, namespace: str, service: str) -> int:
        self._count("DiscoverInstancesRevision")
        if self.broken:
            raise CloudMapError("error", "DiscoverInstancesRevision: InternalFailure: oops")
        return len(self.instances)

    async def discover(self, namespace: str, service: str, health: str) -> Discovered:
        self._count("DiscoverInstances")
        return Discovered(list(self.instances), len(self.instances))


@pytest.fixture
async def running() -> AsyncIterator[tuple[CloudMapRegistry, MemoryCloudMap]]:
    cloud = MemoryCloudMap()
    registry = CloudMapRegistry(SETTINGS, Metrics(), client=cloud)
    await registry.start(lambda: None)
    yield registry, cloud
    await registry.stop()


def addresses(registry: CloudMapRegistry) -> list[str]:
    return [i.address for s in registry.view().services for i in s.instances]


async def test_throttling_backs_off_exponentially_and_recovers(
    running: tuple[CloudMapRegistry, MemoryCloudMap],
) -> None:
    registry, cloud = running
    await eventually(lambda: registry.view().status is Status.READY, 5)
    assert addresses(registry) == ["10.0.0.1"]
    cloud.throttle = True
    start = len(cloud.listed_at)
    await eventually(lambda: len(cloud.listed_at) >= start + 5, 10)
    assert registry.view().status is Status.DEGRADED
    assert "ThrottlingException" in registry.view().detail
    gaps = [b - a for a, b in itertools.pairwise(cloud.listed_at[start : start + 5])]
    # 50 ms doubling (+-25 %): the fourth pause is 8x the first, give or take jitter and load
    assert gaps[3] > 3 * gaps[0], gaps
    assert addresses(registry) == ["10.0.0.1"]  # the last view is held
    cloud.throttle = False
    await eventually(lambda: registry.view().status is Status.READY, 10)
    assert addresses(registry) == ["10.0.0.1"]


async def test_a_failing_service_keeps_its_instances_and_is_read_whole_after(
    running: tuple[CloudMapRegistry, MemoryCloudMap],
) -> None:
    registry, cloud = running
    await eventually(lambda: addresses(registry) == ["10.0.0.1"], 5)
    cloud.broken = True
    await eventually(lambda: registry.view().status is Status.DEGRADED, 5)
    assert "service shop/orders" in registry.view().detail
    assert addresses(registry) == ["10.0.0.1"]
    reads = cloud.calls["DiscoverInstances"]
    cloud.broken = False
    await eventually(lambda: registry.view().status is Status.READY, 10)
    # its revision was forgotten: read again although the revision did not move
    assert cloud.calls["DiscoverInstances"] == reads + 1


async def test_instances_are_converted_off_the_event_loop(
    running: tuple[CloudMapRegistry, MemoryCloudMap], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service of 1,000 instances is built in a thread, as the static file is parsed: the
    loop (and every gRPC stream on it) never waits for it."""
    registry, cloud = running
    await eventually(lambda: addresses(registry) == ["10.0.0.1"], 5)
    loop_thread = threading.get_ident()
    threads: list[int] = []

    def convert(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return cloudmap_parser.convert(*args)

    monkeypatch.setattr(watcher_module, "convert", convert)
    cloud.instances = [*cloud.instances, {**cloud.instances[0], "InstanceId": "i-2"}]
    cloud.instances[1]["Attributes"] = {"AWS_INSTANCE_IPV4": "10.0.0.2"}
    await eventually(lambda: addresses(registry) == ["10.0.0.1", "10.0.0.2"], 5)
    assert threads and loop_thread not in threads


def client_error(status: int, code: str, message: str, operation: str = "ListNamespaces") -> Any:
    return botocore.exceptions.ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


@pytest.mark.parametrize(
    ("error", "kind", "text"),
    [
        (
            client_error(400, "ThrottlingException", "Rate exceeded"),
            "throttled",
            "ThrottlingException",
        ),
        (client_error(429, "", "slow down"), "throttled", "slow down"),
        (client_error(400, "ServiceNotFound", "no such service"), "not-found", "ServiceNotFound"),
        (client_error(400, "AccessDeniedException", "not allowed"), "credentials", "not allowed"),
        (
            # an XML error document where JSON was expected (moto's authentication errors)
            client_error(
                403,
                "403",
                "<?xml version='1.0'?><ErrorResponse><Errors><Error><Code>InvalidClientTokenId</Code>"
                "<Message>The security token included in the request is invalid.</Message>"
                "</Error></Errors></ErrorResponse>",
            ),
            "credentials",
            "ListNamespaces: InvalidClientTokenId: The security token included in the request is invalid.",
        ),
        (client_error(403, "403", "Forbidden"), "credentials", "Forbidden"),
        (client_error(500, "InternalFailure", "oops"), "error", "InternalFailure: oops"),
        (botocore.exceptions.NoCredentialsError(), "credentials", "NoCredentialsError"),
        (botocore.exceptions.NoRegionError(), "error", "no AWS region"),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), "error", "http://x"),
    ],
)
def test_failures_are_classified(error: Exception, kind: str, text: str) -> None:
    failure = classify(error)
    assert failure.kind == kind
    assert text in str(failure)


def test_known_secrets_are_scrubbed_from_messages() -> None:
    client = CloudMapClient(SETTINGS)
    client._secrets = ("s3cr3t",)
    assert client.scrub("signature for s3cr3t did not match") == "signature for *** did not match"
    client.close()
