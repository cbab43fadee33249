"""The status page on the admin port, read by a real headless Chromium (Debian's `chromium`
and `chromium-driver`, driven by Selenium): what an operator sees when a registry breaks, a
removal is held and an istiod ACKs or NACKs.

Set MCPTEST_SCREENSHOT=1 to refresh docs/status-page.png (the README shows it) from the
scenario of the main test.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from mcpserver.model import Problem
from mcpserver.status_page import HeldRemoval, Page, RegistryRow, registry_problems, render
from mcpserver.xds.callbacks import ClientInfo, NackRecord
from mcpserver.xds.client import IstiodLikeClient
from mcpserver.xds.protocol import TypeState
from mcpserver.xds.snapshot import build_snapshot
from tests.conftest import (
    AppFactory,
    ClientFactory,
    eventually,
    service,
    settings_for,
    static_entry,
)

pytestmark = pytest.mark.component

ROOT = Path(__file__).resolve().parents[2]
SE = "networking.istio.io/v1/ServiceEntry"
HOSTILE = "<img src=x onerror=alert(1)>"


def chromium_paths() -> tuple[str, str]:
    """The browser and its driver, from Debian's packages (no download at test time)."""
    browser = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (Path(browser).exists() and Path(driver).exists()):
        message = "chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("MCPTEST_REQUIRE_REAL") == "1":
            pytest.fail(f"required real component unavailable: {message}")
        pytest.skip(f"real component unavailable: {message}")
    return browser, driver


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    binary, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1500",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    chrome = webdriver.Chrome(options=options, service=ChromeService(executable_path=driver))
    try:
        yield chrome
    finally:
        chrome.quit()


async def wait_in_browser(
    chrome: webdriver.Chrome, condition: Callable[[webdriver.Chrome], Any], within: float = 20
) -> Any:
    """The first truthy value of `condition`, by Selenium's own polling wait.

    Every Selenium call runs in a worker thread, never on the event loop: chromedriver
    answers a call only once the page it is loading has arrived, and the page comes from
    the admin server on this loop (a call made on the loop while the page refreshes waits
    for itself). The page is never reloaded by the test: each new state arrives by the
    page's own refresh, so reads retry while an element is replaced."""

    def check(driver: webdriver.Chrome) -> Any:
        try:
            return condition(driver)
        except (NoSuchElementException, StaleElementReferenceException):
            return False  # the page is being replaced by its refresh
        except WebDriverException as error:
            if not replaced_mid_read(error):
                raise
            return False

    return await asyncio.to_thread(WebDriverWait(chrome, within, poll_frequency=0.1).until, check)


# What chromedriver says, as a generic "unknown error", when the page is replaced between
# finding an element and reading it (a CI failure: "Node with given id does not belong to
# the document"), or while the new document's script context is being made.
REPLACED_MID_READ = (
    "does not belong to the document",
    "No node with given id",
    "Cannot find context with specified id",
    "Execution context was destroyed",
)


def replaced_mid_read(error: WebDriverException) -> bool:
    return any(marker in (error.msg or "") for marker in REPLACED_MID_READ)


def row_status(name: str) -> Callable[[webdriver.Chrome], str]:
    def read(driver: webdriver.Chrome) -> str:
        return str(driver.find_element(By.ID, f"registry-{name}").get_attribute("data-status"))

    return read


def nack(client: IstiodLikeClient, message: str) -> None:
    """Reject the last ServiceEntry response, as istiod would on a resource it cannot take."""
    request = discovery_pb2.DiscoveryRequest(
        type_url=SE, response_nonce=client.responses[SE][-1].nonce
    )
    request.error_detail.code = 3  # INVALID_ARGUMENT, as istiod reports a bad resource
    request.error_detail.message = message
    client.send(request)


async def test_the_page_shows_a_registry_going_degraded_a_held_removal_and_acks(
    tmp_path: Path, start_app: AppFactory, connect: ClientFactory, browser: webdriver.Chrome
) -> None:
    files, legacy, catalog = (tmp_path / f"{n}.yaml" for n in ("files", "legacy", "catalog"))
    from tests.conftest import write_services

    write_services(
        files,
        [
            service("cart", "10.1.0.1", "10.1.0.2"),
            service("pay", "10.1.0.9"),
            # a record that does not parse: a problem whose text comes from the file
            {"name": HOSTILE, "namespace": "shop"},
        ],
    )
    write_services(legacy, [service("billing", "10.2.0.1", namespace="legacy")])
    write_services(
        catalog, [service("catalog", *(f"10.3.0.{i}" for i in range(1, 7)), namespace="shop")]
    )
    settings = settings_for(tmp_path, *(static_entry(f) for f in (files, legacy, catalog)))
    app = await start_app(settings)
    client = await connect(app.port)
    await client.wait_for(lambda c: c.synced(), 10)
    await eventually(
        lambda: app.clients.open and next(iter(app.clients.open.values())).types[SE].acked
    )
    url = f"http://127.0.0.1:{app.admin.port}/?refresh=1"
    await asyncio.to_thread(browser.get, url)

    def text(selector: str) -> Callable[[webdriver.Chrome], str]:
        return lambda d: str(d.find_element(By.CSS_SELECTOR, selector).text)

    se_row = f'#clients tr[data-type="{SE}"]'

    def acked(driver: webdriver.Chrome) -> str:
        """The ServiceEntry row once its ACKed version is the version sent."""
        row = driver.find_element(By.CSS_SELECTOR, se_row)
        sent, ack = row.get_attribute("data-sent"), row.get_attribute("data-acked")
        return str(row.text) if sent and sent == ack else ""

    assert await wait_in_browser(browser, row_status("legacy")) == "ready"
    registries = await wait_in_browser(browser, text("#registry-files"))
    # its file under its name; then kind, status, services, instances
    assert registries.startswith(f"files\n{files} static ready 2 3")
    assert "ACKed" in await wait_in_browser(browser, acked)  # the client's ACK
    assert "sidecar~" in await wait_in_browser(browser, text("#clients .node"))
    # everything from a registry or a client is text, never markup
    assert HOSTILE in await wait_in_browser(browser, text("#problems"))
    assert not await asyncio.to_thread(browser.find_elements, By.CSS_SELECTOR, "#problems img")
    # the JSON endpoints are one click away
    links = await wait_in_browser(
        browser,
        lambda d: {a.get_attribute("href") for a in d.find_elements(By.CSS_SELECTOR, "#links a")},
    )
    assert f"http://127.0.0.1:{app.admin.port}/debug/clients" in links

    # the legacy file breaks: the registry goes DEGRADED and says why, its last set stays
    legacy.write_text("services: [\n")
    assert await wait_in_browser(browser, lambda d: row_status("legacy")(d) == "degraded")
    detail = await wait_in_browser(browser, text("#registry-legacy"))
    assert "degraded" in detail and "not valid YAML" in detail and "1 1" in detail  # kept
    # the catalog empties: protection holds the removal and the page says how to confirm
    write_services(catalog, [])
    assert await wait_in_browser(browser, lambda d: row_status("catalog")(d) == "held")
    held = await wait_in_browser(browser, text("#registry-catalog"))
    # the command to confirm it names this very admin address
    confirm = f"curl -X POST http://127.0.0.1:{app.admin.port}/debug/registries/catalog/confirm"
    assert "removal held" in held and confirm in held
    # the headline says it too, and the problems count both registries (the held one once)
    assert await wait_in_browser(
        browser, lambda d: text("#readiness")(d) == "ready, 2 registries degraded"
    )
    problems = await wait_in_browser(browser, text("#problems"))
    assert "registry degraded" in problems and "not valid YAML" in problems
    assert "removal held" in problems
    heading = await wait_in_browser(browser, text("#problems-heading"))
    assert heading == "Problems (3)"  # the skipped record, legacy degraded, catalog held
    # istiod rejects a response: the NACK and its message show under the client
    nack(client, f"rejected by a test {HOSTILE}")
    assert await wait_in_browser(browser, lambda d: "NACK" in text(se_row)(d))
    assert HOSTILE in await wait_in_browser(browser, text("#clients"))
    assert not await asyncio.to_thread(browser.find_elements, By.CSS_SELECTOR, "#clients img")
    assert "last change" in await wait_in_browser(browser, text("#snapshot"))

    shot = tmp_path / "status-page.png"
    await asyncio.to_thread(browser.save_screenshot, str(shot))
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
    if os.environ.get("MCPTEST_SCREENSHOT") == "1":
        await asyncio.to_thread(screenshot, browser, f"http://127.0.0.1:{app.admin.port}/")


def screenshot(browser: webdriver.Chrome, url: str) -> None:
    """docs/status-page.png: the whole page at the default refresh (runs in a thread)."""
    (ROOT / "docs").mkdir(exist_ok=True)
    browser.get(url)
    height = browser.execute_script("return document.documentElement.scrollHeight")
    # the page, not the window: headless Chromium caps the window at its screen's height
    metrics = {"width": 1280, "height": int(height) + 20, "deviceScaleFactor": 1, "mobile": False}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    browser.save_screenshot(str(ROOT / "docs" / "status-page.png"))


async def test_the_page_refreshes_itself_and_shows_the_wait_for_the_first_snapshot(
    tmp_path: Path, start_app: AppFactory, browser: webdriver.Chrome
) -> None:
    from tests.component.test_ads import ControlledRegistry, svc

    slow = ControlledRegistry("slow")
    app = await start_app(settings_for(tmp_path), [slow])
    await asyncio.to_thread(browser.get, f"http://127.0.0.1:{app.admin.port}/?refresh=1")
    readiness = await wait_in_browser(browser, lambda d: d.find_element(By.ID, "readiness").text)
    assert "not ready" in readiness and "waits for registries slow" in readiness
    snapshot = await wait_in_browser(browser, lambda d: d.find_element(By.ID, "snapshot").text)
    assert "no snapshot yet" in snapshot
    slow.sync(svc("late", "10.9.0.1"))
    assert await wait_in_browser(
        browser, lambda d: d.find_element(By.ID, "readiness").text == "ready"
    )
    assert await wait_in_browser(browser, lambda d: row_status("slow")(d) == "ready")


async def test_a_read_across_the_pages_own_refresh_is_retried_and_other_errors_are_not() -> None:
    replaced = WebDriverException(
        'unknown error: unhandled inspector error: {"code":-32000,'
        '"message":"Node with given id does not belong to the document"}'
    )
    answers: list[Any] = [replaced, StaleElementReferenceException("stale"), "ready"]

    def read(_: webdriver.Chrome) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    driver = cast(webdriver.Chrome, object())
    assert await wait_in_browser(driver, read, within=5) == "ready"
    answers[:] = [WebDriverException("unknown error: chrome not reachable")]
    with pytest.raises(WebDriverException, match="chrome not reachable"):
        await wait_in_browser(driver, read, within=5)


def test_the_default_page_refreshes_every_few_seconds_with_no_external_assets() -> None:
    html = render(page())
    assert '<meta http-equiv="refresh" content="5">' in html
    assert "<script" not in html  # no JavaScript at all
    for external in ("http://", "https://", "//"):
        assert f'src="{external}' not in html and f'href="{external}' not in html
    assert 'http-equiv="refresh"' not in render(page(refresh=0))


def page(**overrides: Any) -> Page:
    now = time.time()
    client = ClientInfo(stream_id=7, peer=f"ipv4:{HOSTILE}", connected_at=now - 5, node_id=HOSTILE)
    client.types = {SE: TypeState(nonce="n", version="v2", acked="v1")}
    client.sent_at[SE] = now - 2
    client.nacks[SE] = NackRecord(now - 1, "v2", f"bad {HOSTILE}")
    values: dict[str, Any] = {
        "version": "0.1.0",
        "now": now,
        "started_at": now - 60,
        "ready": False,
        "ready_reason": f"waits for {HOSTILE}",
        "registries": [
            RegistryRow(HOSTILE, "static", "degraded", True, 1, 2, f"broken {HOSTILE}", now)
        ],
        "snapshot": None,
        "published_at": None,
        "last_change": f"added {HOSTILE}",
        "clients": [client],
        "problems": [Problem(HOSTILE, HOSTILE, HOSTILE)],
        "refresh": 5,
    }
    values.update(overrides)
    return Page(**values)


def test_everything_from_registries_and_clients_is_escaped() -> None:
    html = render(page())
    assert "<img" not in html
    assert html.count("&lt;img src=x onerror=alert(1)&gt;") >= 7
    assert "lag" in html and "2.0s" in html  # sent 2 s ago, not ACKed


def test_the_page_needs_no_asset_files(tmp_path: Path) -> None:
    """Everything is inline: the package has no static files to ship or to forget."""
    assert not (ROOT / "mcpserver" / "static").exists()


def test_the_headline_shows_readiness_and_the_worst_registry_state() -> None:
    now = time.time()

    def row(name: str, status: str, held: bool = False) -> RegistryRow:
        hold = HeldRemoval("gone", now, 1, 2, 3) if held else None
        return RegistryRow(name, "static", status, True, 1, 1, "", now, hold)

    ready = {"ready": True, "ready_reason": "", "snapshot": build_snapshot([])}

    def title(**values: Any) -> str:
        found = re.search(r"<title>(.*)</title>", render(page(**{**ready, **values})))
        assert found
        return found.group(1)

    assert title(registries=[row("a", "ready")]) == "mcpserver ready"
    # a held removal makes its registry degraded, whatever the source says
    assert title(registries=[row("a", "degraded"), row("b", "ready", held=True)]) == (
        "mcpserver ready, 2 registries degraded"
    )
    # served without a registry that never listed (startup.serve_partial_after)
    assert title(registries=[row("a", "degraded"), row("b", "starting")]) == (
        "mcpserver ready, 1 registry degraded, 1 registry starting"
    )
    # before the first snapshot, readiness already names who we wait for
    waiting = {"ready": False, "ready_reason": "first snapshot waits for registries b"}
    html = render(page(**waiting, registries=[row("a", "degraded"), row("b", "starting")]))
    assert "<title>mcpserver NOT READY, 1 registry degraded</title>" in html
    readiness = re.search(r'<span id="readiness">(.*?)</span></h1>', html)
    assert readiness and "waits for registries b" in readiness.group(1)
    assert "1 registry degraded" in readiness.group(1)


def test_degraded_registries_are_problems_and_a_held_one_is_not_counted_twice() -> None:
    now = time.time()
    rows = [
        RegistryRow("broken", "static", "degraded", True, 1, 1, "not valid YAML", now),
        RegistryRow("held", "static", "ready", True, 2, 6, "", now, HeldRemoval("r", now, 2, 6, 6)),
        RegistryRow("late", "nacos", "starting", False, 0, 0, "connecting", now),
        RegistryRow("fine", "static", "ready", True, 1, 1, "", now),
    ]
    assert [(p.registry, p.subject) for p in registry_problems(rows, served=False)] == [
        ("broken", "registry degraded")
    ]
    found = registry_problems(rows, served=True)
    assert [(p.registry, p.subject) for p in found] == [
        ("broken", "registry degraded"),
        ("late", "registry starting"),
    ]
    assert found[0].message == "not valid YAML"
    held = Problem("held", "removal held", "r", "held")
    html = render(page(registries=rows, problems=[*found, held]))
    assert '<h2 id="problems-heading">Problems (3)</h2>' in html


def test_meshconfig_is_never_shown_waiting_for_an_ack() -> None:
    """istiod's config-source client never ACKs MeshConfig (pkg/adsc/adsc.go): it must not
    look like a client that lags."""
    mesh = "core/v1alpha1/MeshConfig"
    client = ClientInfo(stream_id=1, peer="ipv4:127.0.0.1:1", connected_at=time.time() - 60)
    client.types = {mesh: TypeState(nonce="n", version="v1"), SE: TypeState("n2", "v2", "v1")}
    client.sent_at.update({mesh: time.time() - 30, SE: time.time() - 30})
    assert client.lag(mesh, time.time()) == 0
    assert client.lag(SE, time.time()) >= 30  # a type istiod does ACK: lagging
    html = render(page(clients=[client]))
    assert "1 other types: empty sets, in sync" in html  # MeshConfig, folded away
    # the ServiceEntry only, 30 s without its ACK: stuck, not a grey "pending"
    assert html.count("not ACKed</span>") == 1 and "pending" not in html


def test_an_ack_that_does_not_come_stands_out() -> None:
    now = time.time()
    client = ClientInfo(stream_id=1, peer="ipv4:127.0.0.1:1", connected_at=now - 60)
    client.types = {SE: TypeState("n2", "v2", "v1")}
    client.sent_at[SE] = now - 1
    assert '<span class="badge waiting">pending</span>' in render(page(clients=[client]))
    client.sent_at[SE] = now - 11
    assert '<span class="badge held">not ACKed</span>' in render(page(clients=[client]))
    client.types = {SE: TypeState("n2", "v2", "v1", nacked="v2")}
    assert '<span class="badge bad">NACKed</span>' in render(page(clients=[client]))
