"""mcpserver against Istio's real discovery server: what istiod stores, registers and serves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mcpserver.xds.typeurls import ISTIO_1_30
from testbed.xdsprobe import endpoints
from tests.conftest import AppFactory, eventually, make_settings, service, write_services
from tests.integration.conftest import IstiodFactory

T = TypeVar("T")


async def until(check: Callable[[], T | None], within: float = 30.0) -> T:
    """Poll a blocking check (istiod's HTTP debug pages) off the loop until it is truthy."""

    async def attempt() -> T | None:
        try:
            return await asyncio.to_thread(check)
        except (OSError, ValueError) as err:  # istiod not answering yet
            raise AssertionError(f"not met within {within}s; last: {err!r}") from err

    found: T = await eventually(attempt, within=within, every=0.1)
    return found


async def test_istiod_stores_registers_and_serves_our_services(
    static_file: Path, start_app: AppFactory, start_istiod: IstiodFactory
) -> None:
    app = await start_app(make_settings(static_file))
    istiod = await start_istiod(app.port)
    configs = await until(lambda: istiod.configs() if len(istiod.configs()) == 2 else None)
    assert app.store.snapshot is not None
    ours = {r.name: r.version for r in app.store.snapshot.sets["ServiceEntry"].resources}
    assert {k: c["metadata"]["resourceVersion"] for k, c in configs.items()} == ours
    assert {"cart.shop.svc.mesh", "pay.shop.svc.mesh"} <= istiod.hosts()
    names, found = await endpoints(istiod.grpc_port, "outbound|8080||cart.shop.svc.mesh")
    assert "outbound|8080||pay.shop.svc.mesh" in names
    assert found == ["10.1.0.1:8080", "10.1.0.2:8080"]
    # the real client asked for exactly the type set our client imitates (1.30+: 16 types)
    requested = {
        s.labels["type_url"]
        for m in app.metrics.registry.collect()
        for s in m.samples
        if s.name == "mcpserver_xds_requests_total"
    }
    assert requested == set(ISTIO_1_30)


async def test_istiod_follows_add_change_remove(
    static_file: Path, start_app: AppFactory, start_istiod: IstiodFactory
) -> None:
    app = await start_app(make_settings(static_file))
    istiod = await start_istiod(app.port)
    await until(lambda: len(istiod.configs()) == 2)
    before = istiod.configs()
    write_services(
        static_file,
        [
            service("cart", "10.1.0.1", "10.1.0.3"),  # changed
            service("pay", "10.1.0.9"),  # unchanged
            service("ship", "10.1.0.20"),  # added
        ],
    )
    await until(lambda: "shop/ship" in istiod.configs())
    after = istiod.configs()
    assert (
        after["shop/pay"]["metadata"]["resourceVersion"]
        == before["shop/pay"]["metadata"]["resourceVersion"]
    )
    assert (
        after["shop/cart"]["metadata"]["resourceVersion"]
        != before["shop/cart"]["metadata"]["resourceVersion"]
    )
    _, found = await endpoints(istiod.grpc_port, "outbound|8080||cart.shop.svc.mesh")
    assert found == ["10.1.0.1:8080", "10.1.0.3:8080"]
    write_services(static_file, [service("ship", "10.1.0.20")])
    await until(lambda: set(istiod.configs()) == {"shop/ship"})
    await until(lambda: "cart.shop.svc.mesh" not in istiod.hosts())


async def test_mcpserver_restart_keeps_istiod_config_then_converges(
    static_file: Path, start_app: AppFactory, start_istiod: IstiodFactory
) -> None:
    settings = make_settings(static_file)
    app = await start_app(settings)
    port = app.port
    istiod = await start_istiod(port)
    await until(lambda: len(istiod.configs()) == 2)
    await app.stop()
    await until(lambda: "connection closed" in istiod.log() or "Unavailable" in istiod.log())
    # istiod keeps what it has while the source is away
    assert set(istiod.configs()) == {"shop/cart", "shop/pay"}
    write_services(static_file, [service("cart", "10.1.0.1"), service("new", "10.1.0.30")])
    from mcpserver.settings import load_settings

    config = static_file.parent / "mcpserver.yaml"
    again = await start_app(
        load_settings(config, {"MCPSERVER_SERVER__LISTEN": f"127.0.0.1:{port}"})
    )
    assert again.port == port
    await until(lambda: set(istiod.configs()) == {"shop/cart", "shop/new"}, within=60)
    assert "Error adding a new resource" not in istiod.log()


async def test_istiod_restart_resyncs(
    static_file: Path, start_app: AppFactory, start_istiod: IstiodFactory
) -> None:
    app = await start_app(make_settings(static_file))
    istiod = await start_istiod(app.port)
    await until(lambda: len(istiod.configs()) == 2)
    await asyncio.to_thread(istiod.kill)
    write_services(static_file, [service("cart", "10.1.0.1"), service("later", "10.1.0.40")])
    await asyncio.sleep(0)  # let the file watcher run; the assertion below waits on istiod
    istiod.start()
    await asyncio.to_thread(istiod.wait_ready)
    await until(lambda: set(istiod.configs()) == {"shop/cart", "shop/later"})


async def test_invalid_host_is_withheld_and_never_rejected_by_istiod(
    static_file: Path, start_app: AppFactory, start_istiod: IstiodFactory
) -> None:
    write_services(
        static_file,
        [service("good", "10.1.0.1"), service("bad", "10.1.0.2", host="bad_host.shop")],
    )
    app = await start_app(make_settings(static_file))
    istiod = await start_istiod(app.port)
    await until(lambda: "shop/good" in istiod.configs())
    assert "shop/bad" not in istiod.configs()
    assert [p.subject for p in app.pipeline.problems] == ["ServiceEntry shop/bad"]
    log = istiod.log()
    assert "Error adding a new resource to the store" not in log
    assert "bad_host" not in log


async def test_workloadentry_mode_is_selected_by_istiod(
    static_file: Path, start_app: AppFactory, start_istiod: IstiodFactory, tmp_path: Path
) -> None:
    """With endpoints: workloadentry, istiod itself must join our WorkloadEntries to the
    ServiceEntry through its workloadSelector and serve them as endpoints."""
    write_services(static_file, [service("cart", "10.1.0.1", "10.1.0.2")])
    settings = make_settings(
        static_file,
        registries=[
            {
                "kind": "static",
                "name": "files",
                "path": str(static_file),
                "poll_interval": "50ms",
                "endpoints": "workloadentry",
            }
        ],
    )
    app = await start_app(settings)
    istiod = await start_istiod(app.port)
    await until(lambda: len(istiod.configs("WorkloadEntry")) == 2)
    _, found = await endpoints(istiod.grpc_port, "outbound|8080||cart.shop.svc.mesh")
    assert found == ["10.1.0.1:8080", "10.1.0.2:8080"]
    write_services(static_file, [service("cart", "10.1.0.2", "10.1.0.3")])
    await until(
        lambda: (
            {c["spec"]["address"] for c in istiod.configs("WorkloadEntry").values()}
            == {"10.1.0.2", "10.1.0.3"}
        )
    )

    async def current() -> list[str]:
        return (await endpoints(istiod.grpc_port, "outbound|8080||cart.shop.svc.mesh"))[1]

    async def both() -> bool:
        found = await current()
        assert found == ["10.1.0.2:8080", "10.1.0.3:8080"], found
        return True

    await eventually(both, within=30, every=0.2)
