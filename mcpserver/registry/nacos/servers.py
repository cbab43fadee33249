"""The servers of a Nacos cluster, which one a registry uses, and moving on when it fails.

A Nacos cluster is given to its clients as a server list (`serverAddr=a:8848,b:8848`); its
servers share one registry (Distro for ephemeral instances, Raft for persistent ones), so
any of them answers for all. Like Nacos' own client (ServerListManager), a registry starts
at a random server of the list (replicas spread over the cluster) and stays with it while it
answers; when it cannot be reached, times out, or its connection is lost, the next server of
the list is used, round and round. A server that answers with a refusal (a wrong password, a
403) is not left: the next one would say the same.

Every connection of the registry (one per namespace, logins, HTTP calls) uses the current
server; a failure moves on only if the server that failed is still the current one, so two
namespaces failing at once move one step, not two.
"""

from __future__ import annotations

import logging
import random

import aiohttp
import grpc

from mcpserver.registry.nacos.auth import LoginError
from mcpserver.registry.nacos.client import ConnectionLostError, NacosError

log = logging.getLogger("mcpserver.registry.nacos")


class Servers:
    """The base URLs (http(s)://HOST:8848) of one registry's servers and the current one."""

    def __init__(self, urls: list[str], registry: str, *, start: int | None = None) -> None:
        if not urls:
            raise ValueError("no Nacos server")
        self._urls = list(urls)
        self._registry = registry
        # a random start spreads replicas over the cluster; nothing secret depends on it
        self._current = random.randrange(len(urls)) if start is None else start  # noqa: S311

    @property
    def current(self) -> str:
        return self._urls[self._current]

    @property
    def urls(self) -> list[str]:
        return list(self._urls)

    def failed(self, url: str, why: str) -> None:
        """`url` could not be used (`why`, for the log): the next server, if it is still
        the current one and there is another."""
        if len(self._urls) < 2 or url != self.current:
            return
        self._current = (self._current + 1) % len(self._urls)
        log.warning(
            "Nacos server %s failed registry=%s: %s; moving to %s",
            url,
            self._registry,
            why,
            self.current,
        )


def server_failed(err: BaseException) -> bool:
    """The server could not be used (unreachable, timed out, the connection lost), as
    opposed to a server that answered with a refusal: the next server may do."""
    if isinstance(err, LoginError):
        return not err.refused
    if isinstance(err, NacosError):
        return False
    return isinstance(
        err,
        ConnectionLostError | grpc.aio.AioRpcError | aiohttp.ClientError | OSError | TimeoutError,
    )
