"""Our own small Eureka REST client: GET a path from the first server (peer) that answers.

Eureka's Java client (`RetryableEurekaHttpClient`) keeps to the server that last answered and
moves to the next one when a call fails; so do we. A call fails over when the server cannot be
reached, times out or answers 5xx; a 4xx (a refused login, a disabled delta) is that server's
answer and is raised as it is, since peers of one cluster answer alike. Reads ask for JSON
(`Accept: application/json`; Eureka answers XML otherwise). py-eureka-client was not used: it
parses XML, ties fetching to its own heartbeat and has no change callback.
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
from collections.abc import Sequence

import aiohttp

log = logging.getLogger("mcpserver.registry.eureka")

HEADERS = {"Accept": "application/json", "Accept-Encoding": "gzip"}


class EurekaHTTPError(Exception):
    """A server answered with an error status."""

    def __init__(self, server: str, code: int, body: str) -> None:
        super().__init__(f"{server} answered HTTP {code}: {body.strip()[:200]}")
        self.code = code


class EurekaUnavailableError(Exception):
    """No server answered; the message names each one and what went wrong."""


FAILOVER = (aiohttp.ClientError, OSError, TimeoutError, ValueError)
"""What makes a call move on to the next server (a 5xx is raised as EurekaHTTPError and
moves on too)."""


def describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class EurekaClient:
    """GETs against a list of Eureka service URLs (`http://host:8761/eureka`)."""

    def __init__(
        self,
        servers: Sequence[str],
        *,
        credentials: tuple[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.servers = list(servers)
        self.current = 0  # the server that answered last
        self.failovers = 0
        self._headers = dict(HEADERS)
        if credentials is not None:
            # sent with every request, as Eureka's Java client does (no 401 round trip)
            pair = f"{credentials[0]}:{credentials[1]}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        self._ssl: ssl.SSLContext | bool = ssl_context or True
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    @property
    def server(self) -> str:
        return self.servers[self.current]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, path: str) -> object:
        """The decoded JSON of `path` (`/apps`, `/apps/delta`) from the current server, or
        from the next ones in order when it fails."""
        failures: list[str] = []
        count = len(self.servers)
        for offset in range(count):
            index = (self.current + offset) % count
            server = self.servers[index]
            try:
                body = await self._get(server, path)
            except EurekaHTTPError as err:
                if err.code < 500:
                    raise
                failures.append(str(err))
                continue
            except FAILOVER as err:
                failures.append(f"{server}: {describe(err)}")
                continue
            if index != self.current:
                self.failovers += 1
                log.warning(
                    "eureka failover: %s did not answer (%s); reading %s",
                    self.servers[self.current],
                    failures[0] if failures else "?",
                    server,
                )
                self.current = index
            return body
        raise EurekaUnavailableError("; ".join(failures))

    async def _get(self, server: str, path: str) -> object:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        async with self._session.get(server + path, ssl=self._ssl) as reply:
            text = await reply.text()
            if reply.status != 200:
                raise EurekaHTTPError(server, reply.status, text)
        return json.loads(text)
