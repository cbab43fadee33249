"""Our own small client of Nacos' HTTP v1 API, beside the gRPC one (client.py).

The watcher needs HTTP for three things: everything in `api: http` mode (Nacos 1.x has no
gRPC: the service list and each service's instances are polled), the console's namespace
list (`namespaces: ["*"]`, any version), and the catalog that lists services across groups
(`groups: ["*"]`, any version: Nacos' service lists are per group). This module is those
calls and their errors; what to call when, and what the answers mean for the view, stay in
the watcher.

Every call goes to the registry's current server (servers.py): one that cannot be reached,
or that fails with a 5xx, makes the next one current for the next call. With auth on, the
login token goes in headers, never in a URL (which may end up in an error message).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp

from mcpserver.failure import describe
from mcpserver.registry.nacos.auth import LoginError, TokenKeeper
from mcpserver.registry.nacos.client import NacosError, NacosUnauthorizedError, excerpt
from mcpserver.registry.nacos.parser import ServiceKey
from mcpserver.registry.nacos.servers import Servers, server_failed

NAMESPACE_LIST = "/nacos/v1/console/namespaces"  # Nacos 1.x/2.x console API (r-nacos too)
CATALOG = "/nacos/v1/ns/catalog/services"  # lists services across groups (1.x and 2.x)
SERVICE_LIST = "/nacos/v1/ns/service/list"
INSTANCE_LIST = "/nacos/v1/ns/instance/list"


class NacosHTTPError(NacosError):
    """The HTTP API answered with an error status; `body` is (an excerpt of) its text."""

    via = "HTTP"

    def __init__(self, code: int, path: str, body: str) -> None:
        super().__init__(code, f"{path}: {excerpt(body)}")
        self.path = path
        self.body = excerpt(body)


class GroupsUnlistedError(NacosHTTPError):
    """`groups: ["*"]` on a server without the catalog API."""

    def __init__(self, code: int, message: str) -> None:
        NacosError.__init__(self, code, message)
        self.path = CATALOG
        self.body = ""


class NacosHTTP:
    """One registry's HTTP calls: its servers, its login (if any), TLS, a timeout and the
    page size of listings. The aiohttp session is opened on the first call."""

    def __init__(
        self,
        servers: Servers,
        keeper: TokenKeeper | None,
        ssl_context: ssl.SSLContext | None,
        *,
        timeout: float,
        page_size: int,
    ) -> None:
        self._servers = servers
        self._keeper = keeper
        self._ssl = ssl_context
        self._timeout = timeout
        self._page_size = page_size
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, path: str, params: dict[str, str]) -> Mapping[str, Any]:
        """GET from the current server; one that cannot be reached (or fails with a 5xx)
        makes the next one current for the next call."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        base = self._servers.current
        try:
            headers = {}
            if self._keeper is not None:
                # in headers, not the `accessToken` parameter Nacos also reads: a URL may
                # end up in an error message, and the token must not
                token = await self._keeper.token()
                headers = {"Authorization": f"Bearer {token}", "accessToken": token}
            async with self._session.get(
                base + path, params=params, headers=headers, ssl=self._ssl or True
            ) as reply:
                text = await reply.text()
                status = reply.status
        except (aiohttp.ClientError, OSError, TimeoutError, LoginError) as err:
            if server_failed(err):
                self._servers.failed(base, describe(err))
            raise
        if status in (401, 403):
            refused = NacosUnauthorizedError(status, f"{path}: {excerpt(text)}")
            refused.via = "HTTP"
            raise refused
        if status != 200:
            if status >= 500:
                self._servers.failed(base, f"{path}: HTTP {status}")
            raise NacosHTTPError(status, path, text)
        body = json.loads(text)
        if not isinstance(body, dict):
            raise ValueError(f"{path} answered a {type(body).__name__}, not an object")
        return body

    async def namespaces(self) -> set[str]:
        """Every namespace id the server has (the console API; Nacos 3 answers it 410)."""
        body = await self.get(NAMESPACE_LIST, {})
        return {
            str(entry.get("namespace") or "public")
            for entry in body.get("data") or ()
            if isinstance(entry, dict)
        }

    async def service_page(self, namespace: str, group: str, number: int) -> Mapping[str, Any]:
        """One page of a group's service list."""
        return await self.get(
            SERVICE_LIST,
            {
                "namespaceId": namespace,
                "groupName": group,
                "pageNo": str(number),
                "pageSize": str(self._page_size),
            },
        )

    async def instances(self, key: ServiceKey) -> Mapping[str, Any]:
        """One service's instance list, healthy or not."""
        return await self.get(
            INSTANCE_LIST,
            {
                "namespaceId": key.namespace,
                "groupName": key.group,
                "serviceName": key.name,
                # r-nacos defaults to healthy instances only; Nacos to all
                "healthyOnly": "false",
            },
        )

    async def groups(self, namespace: str) -> set[str]:
        """Every group that has a service (`groups: ["*"]`): Nacos' service lists are per
        group, and only the catalog API (1.x and 2.x, on the HTTP port) lists across them."""
        found: set[str] = set()
        size = self._page_size
        number = 1
        while True:
            try:
                body = await self.get(
                    CATALOG,
                    {
                        "namespaceId": namespace,
                        "pageNo": str(number),
                        "pageSize": str(size),
                        "withInstances": "false",
                    },
                )
            except NacosHTTPError as err:
                # our advice after the server's text, which alone is cut (`excerpt`)
                raise GroupsUnlistedError(
                    err.code,
                    f'groups: ["*"] needs Nacos\' catalog API ({err.path}), which answered '
                    f"HTTP {err.code} {err.body}; list the groups instead (Nacos 3 serves no "
                    "catalog API by default)",
                ) from None
            page = body.get("serviceList") or []
            if not isinstance(page, list):
                raise ValueError("catalog serviceList is not a list")
            for item in page:
                group = item.get("groupName") if isinstance(item, dict) else None
                if isinstance(group, str) and group:
                    found.add(group)
            count = body.get("count")
            if len(page) < size or not isinstance(count, int) or number * size >= count:
                return found
            number += 1
