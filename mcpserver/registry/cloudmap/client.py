"""The Cloud Map API calls mcpserver makes, through botocore in a thread pool of our own.

botocore is synchronous; each call runs in this registry's own ThreadPoolExecutor (at most
`max_concurrency` threads, as many pooled HTTP connections), never in the event loop's default
executor, which the rest of the server shares. Measured against aiobotocore (docs/design.md
"Dependencies, chosen on purpose"): the same time per DiscoverInstances of 1,000 instances,
half the import time and 14 MB less RSS, and no pin of botocore to one narrow release.

Credentials come from botocore's standard chain and stay inside botocore: no message we
build carries them, any text that would is scrubbed, and botocore's own loggers (whose DEBUG
output includes request headers such as a session token) are held at WARNING.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import botocore.config
import botocore.exceptions
import botocore.session

from mcpserver.registry.cloudmap.config import CloudMapRegistrySettings

T = TypeVar("T")

# botocore at DEBUG logs request headers (X-Amz-Security-Token) and bodies: never let a
# `log_level: debug` turn that on
for _name in ("botocore", "urllib3.connectionpool"):
    logging.getLogger(_name).setLevel(logging.WARNING)

THROTTLED = frozenset(
    [
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
    ]
)
NOT_FOUND = frozenset(["ServiceNotFound", "NamespaceNotFound"])
DENIED = frozenset(
    [
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "UnauthorizedOperation",
    ]
)
DISCOVER_MAX = 1000  # DiscoverInstances' MaxResults cap


class CloudMapError(Exception):
    """A failed call: `kind` is throttled, not-found, credentials or error (the errors
    metric's label); the message is safe to log and show."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    id: str
    name: str
    created: datetime | None


@dataclass(frozen=True, slots=True)
class Discovered:
    instances: list[dict[str, Any]]
    revision: int


_XML_CODE = re.compile(r"<Code>([^<]*)</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]*)</Message>")


def _code_and_message(err: botocore.exceptions.ClientError) -> tuple[str, str]:
    """AWS's error code and message. An answer in XML where JSON was expected (a proxy, or
    moto's authentication errors) leaves botocore with the HTTP status as the code and the
    whole document as the message: read the two out of it."""
    error = err.response.get("Error", {})
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    if message.lstrip().startswith("<"):
        found_code, found_message = _XML_CODE.search(message), _XML_MESSAGE.search(message)
        code = found_code.group(1) if found_code else code
        message = found_message.group(1) if found_message else message[:200]
    return code, message or str(err)


def classify(err: Exception) -> CloudMapError:
    """Any botocore failure as a CloudMapError with a message that names what went wrong."""
    if isinstance(err, botocore.exceptions.ClientError):
        code, message = _code_and_message(err)
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        operation = getattr(err, "operation_name", "") or "a call"
        text = f"{operation}: {code}: {message}"
        if code in THROTTLED or status == 429:
            return CloudMapError("throttled", text)
        if code in NOT_FOUND:
            return CloudMapError("not-found", text)
        if code in DENIED or status in (401, 403):
            return CloudMapError("credentials", text)
        return CloudMapError("error", text)
    if isinstance(
        err,
        botocore.exceptions.NoCredentialsError
        | botocore.exceptions.PartialCredentialsError
        | botocore.exceptions.CredentialRetrievalError
        | botocore.exceptions.ProfileNotFound,
    ):
        return CloudMapError(
            "credentials", f"AWS credentials: {type(err).__name__}: {err} (standard AWS chain)"
        )
    if isinstance(err, botocore.exceptions.NoRegionError):
        return CloudMapError(
            "error", "no AWS region: set `region` or AWS_REGION (or the profile's region)"
        )
    return CloudMapError("error", f"{type(err).__name__}: {err}")


class CloudMapClient:
    """One botocore servicediscovery client and the threads its calls run in."""

    def __init__(self, settings: CloudMapRegistrySettings) -> None:
        self._settings = settings
        self._executor = ThreadPoolExecutor(
            max_workers=settings.max_concurrency, thread_name_prefix=f"cloudmap-{settings.name}"
        )
        self._client: Any = None
        self._secrets: tuple[str, ...] = ()
        self.calls: dict[str, int] = {}  # per operation, for tests and the curious
        self.region = settings.region or ""

    async def _run(self, operation: str, call: Callable[[], T]) -> T:
        self.calls[operation] = self.calls.get(operation, 0) + 1
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, call)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
            failure = classify(err)
            raise CloudMapError(failure.kind, self.scrub(str(failure))) from None

    def scrub(self, text: str) -> str:
        """Belt and braces: whatever a message says, it carries no secret we know."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def connect(self) -> None:
        """Create the botocore client (reads the model files and resolves credentials, which
        may ask the instance metadata service: off the event loop)."""
        if self._client is None:
            await self._run("connect", self._create)

    def _create(self) -> None:
        s = self._settings
        session = botocore.session.Session(profile=s.profile)
        config = botocore.config.Config(
            region_name=s.region,
            connect_timeout=s.request_timeout,
            read_timeout=s.request_timeout,
            max_pool_connections=s.max_concurrency,
            retries={"mode": "standard", "max_attempts": 3},
            inject_host_prefix=s.prefix_host(),
            user_agent_extra="mcpserver",
        )
        client = session.create_client(
            "servicediscovery", endpoint_url=s.endpoint_url, config=config
        )
        credentials = session.get_credentials()
        if credentials is None:
            raise botocore.exceptions.NoCredentialsError()
        frozen = credentials.get_frozen_credentials()
        self._secrets = tuple(x for x in (frozen.secret_key, frozen.token) if x)
        self.region = client.meta.region_name or ""
        self._client = client

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ calls

    async def namespaces(self) -> list[NamespaceInfo]:
        """Every namespace (ListNamespaces, all pages)."""
        pages = await self._run("ListNamespaces", functools.partial(self._pages, "ListNamespaces"))
        return [
            NamespaceInfo(str(n["Id"]), str(n["Name"]))
            for page in pages
            for n in page.get("Namespaces", [])
        ]

    async def services(self, namespace_id: str) -> list[ServiceInfo]:
        """The services of one namespace (ListServices filtered by NAMESPACE_ID, all pages)."""
        filters = [{"Name": "NAMESPACE_ID", "Values": [namespace_id], "Condition": "EQ"}]
        pages = await self._run(
            "ListServices", functools.partial(self._pages, "ListServices", Filters=filters)
        )
        return [
            ServiceInfo(str(s["Id"]), str(s["Name"]), s.get("CreateDate"))
            for page in pages
            for s in page.get("Services", [])
        ]

    async def revision(self, namespace: str, service: str) -> int:
        """DiscoverInstancesRevision: changes whenever the service's instances change (not,
        on every server, when only their health does: see the full reconcile)."""
        answer = await self._run(
            "DiscoverInstancesRevision",
            functools.partial(
                self._call,
                "discover_instances_revision",
                NamespaceName=namespace,
                ServiceName=service,
            ),
        )
        return int(answer.get("InstancesRevision", 0))

    async def discover(self, namespace: str, service: str, health: str) -> Discovered:
        answer = await self._run(
            "DiscoverInstances",
            functools.partial(
                self._call,
                "discover_instances",
                NamespaceName=namespace,
                ServiceName=service,
                MaxResults=DISCOVER_MAX,
                HealthStatus=health,
            ),
        )
        return Discovered(
            list(answer.get("Instances", [])), int(answer.get("InstancesRevision", 0))
        )

    def _call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self._client is not None, "connect() first"
        result: dict[str, Any] = getattr(self._client, method)(**params)
        return result

    def _pages(self, operation: str, **params: Any) -> list[dict[str, Any]]:
        assert self._client is not None, "connect() first"
        paginator = self._client.get_paginator(
            "list_namespaces" if operation == "ListNamespaces" else "list_services"
        )
        return list(paginator.paginate(**params))
