"""The one way the Consul registry talks to Consul: a typed facade over py-consul's asyncio
HTTP transport, and the decoding of an answer into index, ACL-filtering flag and JSON body.

py-consul's endpoint helpers (`catalog.services()`, `health.service()`) return only
`(index, data)` and drop the response headers, but Consul reports ACL filtering only in a
header (`X-Consul-Results-Filtered-By-ACLs`). So we use py-consul purely as the transport
(`http.get(callback, path, params, headers)`: its connection pool, TLS and token handling) with
a callback of our own that sees status, headers and body. py-consul ships no type information,
so the Protocols below state what we rely on, keeping `Any` out of the watcher.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

import consul.aio

from mcpserver.registry.consul.config import ConsulRegistrySettings

T = TypeVar("T")

TIMEOUT_MARGIN = 5.0  # beyond wait + wait/8: Consul adds up to wait/16 of jitter
INDEX = "X-Consul-Index"
FILTERED = "X-Consul-Results-Filtered-By-ACLs"
KNOWN_LEADER = "X-Consul-KnownLeader"

Params = Sequence[tuple[str, str]]


class HTTPResponse(Protocol):
    """py-consul's `base.Response` namedtuple; `headers` is aiohttp's case-insensitive map."""

    @property
    def code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def body(self) -> str: ...


class HTTPTransport(Protocol):
    """py-consul's `aio.HTTPClient`: the calls we use."""

    def get(
        self,
        callback: Callable[[HTTPResponse], T],
        path: str,
        params: Params | None = None,
        headers: dict[str, str] | None = None,
    ) -> Awaitable[T]: ...


class ConsulClient(Protocol):
    """py-consul's `aio.Consul`: the transport, the token headers, and closing the pool."""

    @property
    def http(self) -> HTTPTransport: ...

    def prepare_headers(self, token: str | None = None) -> dict[str, str]: ...

    def close(self) -> Awaitable[None]: ...


class ConsulHTTPError(Exception):
    """Consul answered with an error status (403 Permission denied, 500, ...)."""

    def __init__(self, code: int, body: str) -> None:
        super().__init__(f"HTTP {code}: {body.strip()[:300]}")
        self.code = code


@dataclass(frozen=True, slots=True)
class Reply:
    """One successful answer: Consul's index (0 if absent), whether ACLs filtered the
    result, a digest of the body (an identical answer changes nothing), and the JSON."""

    index: int
    filtered: bool
    digest: bytes
    body: object
    known_leader: bool = True  # X-Consul-KnownLeader (see watcher.restoring)


def decode(response: HTTPResponse) -> Reply:
    """Our py-consul callback: raise on an error status, else decode the answer. Runs
    inside the call, so a malformed answer is a failed call (ValueError), retried."""
    if not 200 <= response.code < 300:
        raise ConsulHTTPError(response.code, response.body)
    raw = response.headers.get(INDEX, "")
    try:
        index = int(raw) if raw else 0
    except ValueError:
        raise ValueError(f"{INDEX} {raw!r} is not a number") from None
    return Reply(
        index=index,
        filtered=response.headers.get(FILTERED, "").lower() == "true",
        digest=hashlib.blake2b(response.body.encode(), digest_size=16).digest(),
        body=json.loads(response.body),
        known_leader=response.headers.get(KNOWN_LEADER, "").lower() != "false",
    )


def cut_after(wait: float) -> float:
    """How long one blocking query may take before we cut it: a connection that silently
    died (no FIN, no RST) would otherwise hold the watch forever."""
    return wait * 1.125 + TIMEOUT_MARGIN


def connect(settings: ConsulRegistrySettings, env: Mapping[str, str]) -> ConsulClient:
    """A py-consul asyncio client for the configured agent, token and TLS."""
    url = urlsplit(settings.address)
    tls = settings.tls
    verify: bool | str = True
    cert: tuple[str, str] | None = None
    if tls is not None:
        verify = str(tls.ca_file) if tls.ca_file else tls.verify
        if tls.cert_file and tls.key_file:
            cert = (str(tls.cert_file), str(tls.key_file))
    token = settings.token.resolve(env) if settings.token else None
    # py-consul is untyped: this annotation is where its object meets our Protocol
    client: ConsulClient = consul.aio.Consul(
        # aiohttp's default pool (100) would park the 101st service's first query behind
        # others' 30 s long polls
        connections_limit=settings.max_connections,
        # aiohttp's default total timeout (5 min) would cut long waits; our cut_after() is
        # the bound, this only a backstop behind it
        connections_timeout=cut_after(settings.wait) + 60.0,
        host=url.hostname or "127.0.0.1",
        port=url.port or (443 if url.scheme == "https" else 8500),
        scheme=url.scheme,
        token=token or None,
        verify=verify,
        cert=cert,
    )
    return client
