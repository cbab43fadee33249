"""The Nacos gRPC client and watcher against a loopback fake Nacos that follows the protocol
rules r-nacos does not exercise: a SetupAckRequest after setup (Nacos >= 2.3), error 301
before registration, a push identical to the subscribe reply, liveness probes, a
ConnectResetRequest, paging. (tests/integration/test_nacos.py covers the same against a real
server.)"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import pytest
from aiohttp import web

from mcpserver.metrics import Metrics
from mcpserver.registry.nacos.config import NacosRegistrySettings
from mcpserver.registry.nacos.payload import Payload, decode, encode
from mcpserver.registry.nacos.watcher import NacosRegistry
from mcpserver.registry.view import Status
from tests.conftest import eventually

pytestmark = pytest.mark.component


def host(ip: str, **extra: Any) -> dict[str, Any]:
    return {"ip": ip, "port": 8080, "weight": 1.0, "healthy": True, "enabled": True, **extra}


class FakeNacos:
    """Just enough of a Nacos 2 server: one registered connection at a time."""

    def __init__(self, *, setup_ack: bool, refuse_first: int = 0) -> None:
        self.setup_ack = setup_ack
        self.refuse_first = refuse_first  # requests refused with 301 after setup
        self.services: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[str] = []
        self.answers: list[Payload] = []  # the client's responses on the stream
        self.connections = 0
        self.subscribed: set[str] = set()
        self._outbox: asyncio.Queue[Payload | None] | None = None
        self._ids = itertools.count(1)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "Request",
                    {
                        "request": grpc.unary_unary_rpc_method_handler(
                            self._request, request_deserializer=decode, response_serializer=encode
                        )
                    },
                ),
                grpc.method_handlers_generic_handler(
                    "BiRequestStream",
                    {
                        "requestBiStream": grpc.stream_stream_rpc_method_handler(
                            self._stream, request_deserializer=decode, response_serializer=encode
                        )
                    },
                ),
            )
        )
        self.port = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    def info(self, name: str) -> dict[str, Any]:
        return {"name": name, "groupName": "DEFAULT_GROUP", "hosts": self.services[name]}

    async def send(self, kind: str, body: Mapping[str, Any]) -> str:
        assert self._outbox is not None, "no client connected"
        request_id = f"s{next(self._ids)}"
        await self._outbox.put(Payload(kind, {"requestId": request_id, **body}))
        return request_id

    async def push(self, name: str) -> str:
        return await self.send("NotifySubscriberRequest", {"serviceInfo": self.info(name)})

    async def _stream(
        self, requests: AsyncIterator[Payload], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Payload]:
        setup = await anext(requests)
        assert setup.type == "ConnectionSetupRequest"
        assert setup.body["tenant"] == "public"
        self.connections += 1
        outbox: asyncio.Queue[Payload | None] = asyncio.Queue()
        self._outbox = outbox

        async def read() -> None:
            async for answer in requests:
                self.answers.append(answer)
            await outbox.put(None)

        reader = asyncio.create_task(read())
        if self.setup_ack:
            yield Payload("SetupAckRequest", {"requestId": "ack", "connectionId": "c"})
        try:
            while (message := await outbox.get()) is not None:
                yield message
                if message.type == "ConnectResetRequest":
                    return
        finally:
            reader.cancel()
            self._outbox = None

    async def _request(
        self, request: Payload, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Payload:
        self.requests.append(request.type)
        body = request.body
        if request.type == "ServerCheckRequest":
            return Payload("ServerCheckResponse", {"resultCode": 200, "connectionId": "c"})
        if self._outbox is None or self.refuse_first > 0:
            self.refuse_first -= 1
            message = {
                "resultCode": 500,
                "errorCode": 301,
                "message": "Connection is unregistered.",
            }
            return Payload("ErrorResponse", message)
        if request.type == "HealthCheckRequest":
            return Payload("HealthCheckResponse", {"resultCode": 200})
        if request.type == "ServiceListRequest":
            assert body["namespace"] == "public"
            names = sorted(self.services)
            size, number = body["pageSize"], body["pageNo"]
            page = names[(number - 1) * size : number * size]
            return Payload(
                "ServiceListResponse",
                {
                    "resultCode": 200,
                    "count": len(names),
                    "serviceNames": [f"DEFAULT_GROUP@@{n}" for n in page],
                },
            )
        if request.type == "SubscribeServiceRequest":
            name = body["serviceName"]
            if not body["subscribe"]:
                self.subscribed.discard(name)
                return Payload("SubscribeServiceResponse", {"resultCode": 200})
            self.subscribed.add(name)
            # Nacos follows a subscribe reply with a push of the same instance list
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.push(name)))
            return Payload(
                "SubscribeServiceResponse", {"resultCode": 200, "serviceInfo": self.info(name)}
            )
        return Payload("ErrorResponse", {"resultCode": 500, "errorCode": 400, "message": "?"})


def settings(port: int, **extra: Any) -> NacosRegistrySettings:
    return NacosRegistrySettings(
        kind="nacos",
        name="nacos",
        address="http://127.0.0.1:1",
        grpc_port=port,
        list_interval=0.2,
        request_timeout=5,
        **extra,
    )


@contextlib.asynccontextmanager
async def running(fake: FakeNacos, **extra: Any) -> AsyncIterator[NacosRegistry]:
    registry = NacosRegistry(settings(fake.port, **extra), Metrics(), {})
    await registry.start(lambda: None)
    try:
        yield registry
    finally:
        await registry.stop()


def addresses(registry: NacosRegistry, name: str = "orders") -> list[str]:
    host = f"{name}.default-group.public.nacos"
    service = next((s for s in registry.view().services if s.name == host), None)
    return [] if service is None else [i.address for i in service.instances]


@pytest.mark.parametrize("setup_ack", [True, False])
async def test_registration_pushes_acks_and_the_duplicate_push(setup_ack: bool) -> None:
    fake = FakeNacos(setup_ack=setup_ack, refuse_first=0 if setup_ack else 3)
    fake.services["orders"] = [host("10.0.0.1")]
    await fake.start()
    try:
        async with running(fake) as registry:
            await eventually(lambda: registry.view().synced, within=10)
            assert addresses(registry) == ["10.0.0.1"]
            # the push that follows the subscribe reply is answered and changes nothing
            await eventually(lambda: registry.pushes >= 1, within=10)
            await eventually(
                lambda: any(a.type == "NotifySubscriberResponse" for a in fake.answers), within=10
            )
            assert registry.applied == 1
            if not setup_ack:
                assert fake.requests.count("HealthCheckRequest") >= 3  # refused with 301, retried
            else:
                assert fake.answers[0].type == "SetupAckResponse"

            before = registry.view()
            fake.services["orders"] = [host("10.0.0.1"), host("10.0.0.2", weight=2)]
            pushed = await fake.push("orders")
            await eventually(lambda: addresses(registry) == ["10.0.0.1", "10.0.0.2"], within=10)
            # the view says what changed (the one service, by key), from its table's log
            after = registry.view()
            assert set(after.changed_since(before)) == {s.key for s in after.services}
            assert after.log is not None and after.log.keys and after.revision > before.revision
            await eventually(
                lambda: any(a.body.get("requestId") == pushed for a in fake.answers), within=10
            )
            assert registry.applied == 2

            probe = await fake.send("ClientDetectionRequest", {})
            await eventually(
                lambda: any(
                    a.type == "ClientDetectionResponse" and a.body["requestId"] == probe
                    for a in fake.answers
                ),
                within=10,
            )
            assert registry.view().status is Status.READY
    finally:
        await fake.stop()


async def test_paging_new_services_and_removed_ones() -> None:
    fake = FakeNacos(setup_ack=True)
    for n in range(5):
        fake.services[f"svc{n}"] = [host(f"10.0.1.{n + 1}")]
    await fake.start()
    try:
        async with running(fake, page_size=2) as registry:
            await eventually(lambda: len(registry.view().services) == 5, within=10)
            fake.services["svc9"] = [host("10.0.1.9")]
            await eventually(lambda: addresses(registry, "svc9") == ["10.0.1.9"], within=10)
            del fake.services["svc0"]
            await eventually(lambda: addresses(registry, "svc0") == [], within=10)
            await eventually(lambda: "svc0" not in fake.subscribed, within=10)
    finally:
        await fake.stop()


async def test_reset_and_a_lost_server_keep_the_view_and_reconcile() -> None:
    fake = FakeNacos(setup_ack=True)
    fake.services["orders"] = [host("10.0.0.1")]
    fake.services["gone"] = [host("10.0.0.5")]
    await fake.start()
    async with running(fake) as registry:
        await eventually(lambda: registry.view().synced, within=10)
        # Nacos asks us to reconnect: a new connection, a full re-list
        await fake.send("ConnectResetRequest", {})
        await eventually(lambda: fake.connections == 2, within=10)
        # (listed again: else the degradation the reset caused would pass for the next one)
        await eventually(lambda: registry.view().status is Status.READY, within=10)
        # the server goes away: degraded, the view stays
        await fake.stop()
        await eventually(lambda: registry.view().status is Status.DEGRADED, within=20)
        assert addresses(registry) == ["10.0.0.1"] and addresses(registry, "gone") == ["10.0.0.5"]
        assert f"127.0.0.1:{fake.port}" in registry.view().detail
        # it comes back (same port) without one service: reconciled
        del fake.services["gone"]
        fake2 = FakeNacos(setup_ack=True)
        fake2.services = fake.services
        await fake2.start(fake.port)
        try:
            await eventually(lambda: registry.view().status is Status.READY, within=30)
            assert addresses(registry, "gone") == []
            assert addresses(registry) == ["10.0.0.1"]
        finally:
            await fake2.stop()


class FakeNacosHTTP:
    """Nacos' HTTP port: a login that refuses every password, and a catalog API that answers
    410 with a long body (as Nacos 3 does by default)."""

    def __init__(self) -> None:
        self.logins = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()

        async def login(_: web.Request) -> web.Response:
            self.logins += 1
            return web.Response(status=403, text="user not found!")

        async def catalog(_: web.Request) -> web.Response:
            body = json.dumps({"code": 410, "message": "API gone: " + "x" * 5000})
            return web.Response(status=410, text=body, content_type="application/json")

        app.router.add_post("/nacos/v1/auth/login", login)
        app.router.add_get("/nacos/v1/ns/catalog/services", catalog)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def nacos_http() -> AsyncIterator[FakeNacosHTTP]:
    server = FakeNacosHTTP()
    await server.start()
    yield server
    await server.stop()


async def test_our_advice_is_never_cut_by_a_long_error_body(nacos_http: FakeNacosHTTP) -> None:
    """groups: ["*"] on a server whose catalog API is gone: the detail names the HTTP call
    (not gRPC), cuts the server's 5 KB body, and ends with our advice."""
    fake = FakeNacos(setup_ack=True)
    fake.services["orders"] = [host("10.0.0.1")]
    await fake.start()
    try:
        registry = NacosRegistry(
            settings(fake.port, groups=["*"]).model_copy(
                update={"address": f"http://127.0.0.1:{nacos_http.port}"}
            ),
            Metrics(),
            {},
        )
        await registry.start(lambda: None)
        try:
            await eventually(lambda: registry.view().status is Status.DEGRADED, within=10)
            detail = registry.view().detail
            assert detail.startswith(
                f"namespace public: Nacos HTTP API at http://127.0.0.1:{nacos_http.port}: "
                'Nacos error 410: groups: ["*"] needs Nacos\' catalog API '
                "(/nacos/v1/ns/catalog/services), which answered HTTP 410 "
            )
            assert detail.endswith(
                "...; list the groups instead (Nacos 3 serves no catalog API by default); "
                "nothing served from it yet"
            )
            assert len(detail) < 600
        finally:
            await registry.stop()
    finally:
        await fake.stop()


async def test_a_refused_login_opens_no_connection_and_backs_off(
    nacos_http: FakeNacosHTTP, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong password: logins 0.5, 1, 2, 4 s apart (jittered; not once a second forever),
    no gRPC connection opened for any of them, one WARNING."""
    fake = FakeNacos(setup_ack=True)
    await fake.start()
    try:
        registry = NacosRegistry(
            settings(
                fake.port, auth={"username": "mcp", "password": {"value": "wrong"}}
            ).model_copy(update={"address": f"http://127.0.0.1:{nacos_http.port}"}),
            Metrics(),
            {},
        )
        await registry.start(lambda: None)
        try:
            await eventually(lambda: registry.view().status is Status.DEGRADED, within=10)
            await asyncio.sleep(6)  # the window the attempts are counted in
            assert 3 <= nacos_http.logins <= 5, nacos_http.logins
            assert fake.requests == []  # not even a ServerCheckRequest
            assert "login as 'mcp'" in registry.view().detail
            assert caplog.text.count("registry degraded registry=nacos") == 1
            assert "still degraded" not in caplog.text
        finally:
            await registry.stop()
    finally:
        await fake.stop()
