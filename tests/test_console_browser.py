"""The console in a real browser: Playwright driving Debian's chromium (never a downloaded
browser) against `uvicorn` serving the whole application, on SQLite. The server side is also
covered on both storages by tests/test_console.py.

scripts/test installs chromium (as root, with apt-get) when it is missing."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from adapters.audit import verify_file
from adapters.bootstrap import Engine, bootstrap
from adapters.config import settings_from_dict
from adapters.console.forms import iso
from adapters.http.app import build_http_app
from domain.catalogue import Catalogue
from tests import console_scenario as scenario
from tests.conftest import config_doc, ingest, settle

CHROMIUM = Path("/usr/bin/chromium")
playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is missing (scripts/test installs it)"
    ),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    folder = tmp_path_factory.mktemp("console-browser")
    doc = config_doc(f"sqlite:///{folder / 'e.sqlite'}", server={"rate_limit_per_second": 0})
    doc["apps"]["demo"]["rest_api_keys"] = scenario.api_keys()
    engine = bootstrap(settings_from_dict(doc, env={}))
    engine.catalogues.replace("demo", Catalogue.from_json(scenario.CATALOGUE))
    ingest(engine, scenario.bodies())
    settle(engine)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def server(engine: Engine) -> Iterator[str]:
    """The application served by uvicorn in a thread; its base URL."""
    port = free_port()
    config = uvicorn.Config(
        build_http_app(engine), host="127.0.0.1", port=port, log_level="warning"
    )
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not running.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser, server: str) -> Iterator[object]:
    """A fresh browser context (no cookies) whose every requested URL is remembered."""
    context = browser.new_context(base_url=server, accept_downloads=True)
    opened = context.new_page()
    opened.requested = []
    opened.on("request", lambda request: opened.requested.append(request.url))
    yield opened
    context.close()


def sign_in(page, role: str = "audit") -> None:
    page.goto("/console")
    page.fill('input[name="key"]', scenario.KEYS[role])
    page.click('button[type="submit"]')


def shown_codes(page) -> dict[str, int]:
    cells = page.locator("#permissions tbody tr[data-permission]")
    return {
        cells.nth(i).get_attribute("data-permission"): int(
            cells.nth(i).locator("td[data-code]").get_attribute("data-code")
        )
        for i in range(cells.count())
    }


def api_codes(page, server: str, **params: str) -> dict[str, int]:
    response = page.request.get(
        f"{server}/v1/permissions",
        params={"customid": scenario.CUSTOMID, **params},
        headers={"Authorization": f"Bearer {scenario.KEYS['read']}"},
    )
    assert response.ok
    return {p["permissionId"]: p["entitlement"] for p in response.json()["all"]}


def assert_no_key_in_urls(page) -> None:
    for key in scenario.KEYS.values():
        assert not [url for url in page.requested if key in url]
        assert key not in page.url


def test_signing_in_sets_a_strict_httponly_cookie_and_no_key_in_any_url(page) -> None:
    sign_in(page)
    assert page.url.endswith("/console")
    assert "role audit" in page.inner_text("header")
    (session,) = [c for c in page.context.cookies() if c["name"] == "console_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/console"
    assert not session["secure"]  # served over plain HTTP here (Secure over TLS: test_console)
    assert page.evaluate("document.cookie") == ""  # not readable by scripts
    assert_no_key_in_urls(page)
    page.click("text=Sign out")
    assert page.locator('input[name="key"]').count() == 1


def test_search_finds_the_customer_and_shows_the_page(page) -> None:
    sign_in(page)
    page.fill('input[name="q"]', scenario.CUSTOMER)
    page.press('input[name="q"]', "Enter")
    page.wait_for_url(re.compile(rf".*/console/customers/{scenario.CUSTOMID}$"))
    assert scenario.CUSTOMID in page.inner_text("h1")
    assert scenario.CUSTOMER in page.inner_text("main")
    assert shown_codes(page) == {"access": -5, "pro": -5}
    assert page.locator(".band svg rect").count() >= 4
    assert page.locator("#timeline tbody tr").count() == 5
    assert_no_key_in_urls(page)


@pytest.mark.parametrize("moment", ["renewing", "cancelling"])
def test_the_instant_picker_shows_what_the_api_answers_at_that_instant(
    page, server: str, moment: str
) -> None:
    sign_in(page)
    page.goto(f"/console/customers/{scenario.CUSTOMID}")
    before = shown_codes(page)
    at = iso(scenario.INSTANTS[moment])
    page.fill('input[name="at"]', at)
    page.click('#instant button[type="submit"]')
    page.wait_for_url(re.compile(r".*\?at="))
    after = shown_codes(page)
    assert after == api_codes(page, server, at=at) != before
    assert page.input_value('input[name="at"]') == at


def test_the_raw_payload_is_one_click_away(page) -> None:
    sign_in(page)
    page.goto(f"/console/customers/{scenario.CUSTOMID}")
    page.locator("#timeline a", has_text="payload").nth(1).click()
    raw = json.loads(page.inner_text("#raw"))
    assert raw["id"] in scenario.EVENT_IDS and raw["object"] == "event"


def test_an_explanations_event_link_opens_that_event(page) -> None:
    sign_in(page)
    page.goto(f"/console/customers/{scenario.CUSTOMID}?at={iso(scenario.INSTANTS['cancelling'])}")
    page.locator("a.because", has_text="evt_console_cancel").first.click()
    assert json.loads(page.inner_text("#raw"))["id"] == "evt_console_cancel"


def test_the_export_downloads_and_verifies_with_the_cli(page, tmp_path: Path) -> None:
    sign_in(page)
    page.goto(f"/console/customers/{scenario.CUSTOMID}")
    with page.expect_download() as started:
        page.click("#export")
    saved = tmp_path / started.value.suggested_filename
    started.value.save_as(saved)
    assert saved.name == f"{scenario.CUSTOMID}-history.jsonl"
    assert verify_file(str(saved)).ok
    cli = Path(sys.executable).with_name("entitlements")
    result = subprocess.run(
        [str(cli), "audit", "verify", str(saved)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_read_key_is_refused(page) -> None:
    sign_in(page, "read")
    assert "audit or admin key" in page.inner_text("main")
    assert not [c for c in page.context.cookies() if c["name"] == "console_session"]
    page.goto(f"/console/customers/{scenario.CUSTOMID}")
    assert page.locator('input[name="key"]').count() == 1  # sent back to the sign-in form
    assert_no_key_in_urls(page)


def test_a_form_with_a_wrong_csrf_token_is_refused(page) -> None:
    page.goto("/console")
    page.locator('input[name="csrf"]').evaluate("input => { input.value = 'forged'; }")
    page.fill('input[name="key"]', scenario.KEYS["admin"])
    page.click('button[type="submit"]')
    assert "expired or did not come from this console" in page.inner_text("main")
    assert not [c for c in page.context.cookies() if c["name"] == "console_session"]
