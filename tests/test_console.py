"""The console, server side (Starlette's TestClient), on SQLite and PostgreSQL: signing in with an
audit or admin key (never a read key), CSRF, the session cookie, search, a customer's page at
any instant agreeing with `/v1/permissions`, raw payloads, the verifiable export, the app page."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from adapters.audit import verify_lines
from adapters.bootstrap import Engine, bootstrap
from adapters.cli import main
from adapters.config import settings_from_dict
from adapters.console import app_page as app_pages
from adapters.console import customer as customer_pages
from adapters.console.forms import iso
from adapters.http.app import build_http_app
from adapters.sync_runs import SyncRun, SyncRuns
from tests import console_scenario as scenario
from tests import recorded_stripe
from tests.conftest import API_KEYS, config_doc, post_webhook, settle
from tests.lifecycles import T0

PAGE = f"/console/customers/{scenario.CUSTOMID}"
ADMIN = {"Authorization": f"Bearer {scenario.KEYS['admin']}"}


@pytest.fixture
def stripe() -> Iterator[recorded_stripe.RecordedStripe]:
    """Stripe's API as the console's search by email asks it."""
    yield from recorded_stripe.running()


@pytest.fixture
def console_engine(
    database_url: str, stripe: recorded_stripe.RecordedStripe
) -> Iterator[Engine]:
    doc = config_doc(database_url, server={"rate_limit_per_second": 0})
    demo = doc["apps"]["demo"]
    demo["rest_api_keys"] = scenario.api_keys()
    demo.update(stripe_api_key=recorded_stripe.KEY, stripe_api_base=stripe.url)
    engine = bootstrap(settings_from_dict(doc, env={}))
    yield engine
    engine.close()


@pytest.fixture
def web(console_engine: Engine) -> Iterator[TestClient]:
    """The whole HTTP application with the scenario's customer recorded through webhooks."""
    console_engine.follower.start_background(poll_interval=0.05)
    app = build_http_app(console_engine)
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as client:
        assert client.put("/v1/catalogue", json=scenario.CATALOGUE, headers=ADMIN).is_success
        for body in scenario.bodies():
            assert post_webhook(client, body).status_code == 200
        settle(console_engine)
        yield client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token in the page's form"
    return found.group(1)


def sign_in(client: TestClient, role: str = "audit"):
    token = csrf_of(client.get("/console").text)
    return client.post("/console/sign-in", data={"csrf": token, "key": scenario.KEYS[role]})


@pytest.fixture
def signed_in(web: TestClient) -> TestClient:
    assert sign_in(web).status_code == 303
    return web


def codes(html: str) -> dict[str, int]:
    """The permissions table's codes, by permission."""
    rows = re.findall(r'<tr data-permission="([^"]+)">.*?data-code="(-?\d+)"', html, re.S)
    return {permission: int(code) for permission, code in rows}


def api_codes(client: TestClient, **params: str) -> dict[str, int]:
    query = {"customid": scenario.CUSTOMID, **params}
    answer = client.get("/v1/permissions", params=query, headers=ADMIN).json()
    return {p["permissionId"]: p["entitlement"] for p in answer["all"]}


def set_cookies(response) -> list[str]:
    return response.headers.get_list("set-cookie")


# --- signing in ----------------------------------------------------------------------------------


def test_the_sign_in_form_posts_a_password_field_with_a_csrf_token(web: TestClient) -> None:
    page = web.get("/console")
    assert page.status_code == 200
    assert '<form method="post" action="/console/sign-in"' in page.text
    assert 'name="key" type="password"' in page.text
    csrf_of(page.text)
    (cookie,) = set_cookies(page)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie


@pytest.mark.parametrize("role", ["audit", "admin"])
def test_an_audit_or_admin_key_signs_in_with_a_strict_httponly_cookie(
    web: TestClient, role: str
) -> None:
    response = sign_in(web, role)
    assert response.status_code == 303 and response.headers["location"] == "/console"
    session = next(c for c in set_cookies(response) if c.startswith("console_session="))
    assert "HttpOnly" in session and "SameSite=strict" in session
    assert "Secure" not in session  # plain HTTP here: a Secure cookie would never come back
    assert scenario.KEYS[role] not in session
    home = web.get("/console")
    assert f"role <b>{role}</b>" in home.text and 'action="/console/search"' in home.text


def test_the_cookie_is_secure_when_served_over_tls(console_engine: Engine) -> None:
    app = build_http_app(console_engine)
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        response = sign_in(client)
    assert response.status_code == 303
    assert all("Secure" in cookie for cookie in set_cookies(response))


def test_a_read_key_is_refused(web: TestClient) -> None:
    response = sign_in(web, "read")
    assert response.status_code == 403
    assert "audit or admin key" in response.text
    assert not any(c.startswith("console_session=") for c in set_cookies(response))
    assert web.get(PAGE).status_code == 303  # still not signed in


def test_an_unknown_key_is_refused(web: TestClient) -> None:
    token = csrf_of(web.get("/console").text)
    response = web.post("/console/sign-in", data={"csrf": token, "key": "not-a-key"})
    assert response.status_code == 401
    assert "not-a-key" not in response.text  # the form is never refilled with the key


@pytest.mark.parametrize("token", [None, "", "0" * 64])
def test_a_sign_in_without_the_forms_csrf_token_is_refused(
    web: TestClient, token: str | None
) -> None:
    web.get("/console")  # the sign-in cookie is set; the token is not sent back
    data = {"key": scenario.KEYS["admin"]} | ({} if token is None else {"csrf": token})
    response = web.post("/console/sign-in", data=data)
    assert response.status_code == 403
    assert not any(c.startswith("console_session=") for c in set_cookies(response))


def test_a_token_from_another_browser_is_refused(web: TestClient, console_engine: Engine) -> None:
    token = csrf_of(web.get("/console").text)  # the attacker's own page
    with TestClient(build_http_app(console_engine), follow_redirects=False) as victim:
        victim.get("/console")
        data = {"csrf": token, "key": scenario.KEYS["admin"]}
        assert victim.post("/console/sign-in", data=data).status_code == 403


def test_signing_out_needs_the_csrf_token_and_ends_the_session(signed_in: TestClient) -> None:
    assert signed_in.post("/console/sign-out", data={}).status_code == 403
    assert signed_in.get(PAGE).status_code == 200  # still signed in
    token = csrf_of(signed_in.get("/console").text)
    response = signed_in.post("/console/sign-out", data={"csrf": token})
    assert response.status_code == 303
    assert signed_in.get(PAGE).status_code == 303  # back to the sign-in form


def test_pages_need_a_session_and_a_forged_cookie_is_none(web: TestClient) -> None:
    for path in [PAGE, "/console/app", f"{PAGE}/export", "/console/search?q=x"]:
        response = web.get(path)
        assert (response.status_code, response.headers["location"]) == (303, "/console")
    web.cookies.set("console_session", "eyJhIjoiZGVtbyJ9.00", path="/console")
    assert web.get(PAGE).status_code == 303


def test_a_session_ends_when_its_key_leaves_the_configuration(
    signed_in: TestClient, console_engine: Engine
) -> None:
    cookie = signed_in.cookies.get("console_session", path="/console")
    doc = config_doc(console_engine.settings.database_url)
    doc["apps"]["demo"]["rest_api_keys"] = [{"key": scenario.KEYS["read"], "role": "read"}]
    other = bootstrap(settings_from_dict(doc, env={}))
    try:
        with TestClient(build_http_app(other), follow_redirects=False) as client:
            client.cookies.set("console_session", cookie, path="/console")
            assert client.get(PAGE).status_code == 303
    finally:
        other.close()


def test_the_key_is_never_logged_nor_in_a_url(
    web: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    responses = [sign_in(web, "read"), sign_in(web, "admin"), web.get("/console")]
    for key in scenario.KEYS.values():
        assert all(key not in record.getMessage() for record in caplog.records)
        assert all(key not in str(vars(record)) for record in caplog.records)
        assert all(key not in r.headers.get("location", "") for r in responses)
        assert all(key not in str(r.url) for r in responses)


# --- finding a customer --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query", [scenario.CUSTOMID, scenario.CUSTOMER, "evt_console_paid", f"  {scenario.CUSTOMER} "]
)
def test_a_customer_is_found_by_customid_stripe_customer_or_event(
    signed_in: TestClient, query: str
) -> None:
    response = signed_in.get("/console/search", params={"q": query})
    assert (response.status_code, response.headers["location"]) == (303, PAGE)


def test_a_customer_is_found_by_email_as_stripe_knows_it(
    signed_in: TestClient, stripe: recorded_stripe.RecordedStripe
) -> None:
    """Bob is a customer of Stripe's, but not of this app's: not found."""
    for customer_id, email in [("cus_Other", "bob@example.com"), (scenario.CUSTOMER, "ada@x.io")]:
        stripe.add_object("/v1/customers", {"id": customer_id, "email": email, "created": T0})
    response = signed_in.get("/console/search", params={"q": "ada@x.io"})
    assert (response.status_code, response.headers["location"]) == (303, PAGE)
    assert signed_in.get("/console/search", params={"q": "bob@example.com"}).status_code == 404
    assert signed_in.get("/console/search", params={"q": "eve@example.com"}).status_code == 404


def test_search_by_email_says_why_when_stripe_cannot_be_asked(
    signed_in: TestClient, stripe: recorded_stripe.RecordedStripe
) -> None:
    stripe.forbidden.add("/v1/customers")
    response = signed_in.get("/console/search", params={"q": "ada@example.com"})
    assert response.status_code == 503
    assert "Stripe could not be asked" in response.text
    assert recorded_stripe.KEY not in response.text


def test_search_by_email_needs_the_apps_stripe_key(web: TestClient) -> None:
    token = csrf_of(web.get("/console").text)
    assert web.post("/console/sign-in", data={"csrf": token, "key": API_KEYS["other"]}).is_redirect
    response = web.get("/console/search", params={"q": "ada@example.com"})
    assert response.status_code == 503 and "app other has none" in response.text


@pytest.mark.parametrize("query", ["nobody", "cus_Unknown", "evt_unknown"])
def test_nothing_found_says_so(signed_in: TestClient, query: str) -> None:
    response = signed_in.get("/console/search", params={"q": query})
    assert response.status_code == 404 and "Nothing in app demo" in response.text


def test_another_apps_customers_are_not_found(web: TestClient) -> None:
    token = csrf_of(web.get("/console").text)
    response = web.post("/console/sign-in", data={"csrf": token, "key": API_KEYS["other"]})
    assert response.status_code == 303  # a plain string key: admin of app "other"
    assert web.get("/console/search", params={"q": scenario.CUSTOMER}).status_code == 404
    assert web.get(PAGE).status_code == 404


# --- the customer's page -------------------------------------------------------------------------


def test_the_customer_page_shows_customers_permissions_bands_and_timeline(
    signed_in: TestClient,
) -> None:
    page = signed_in.get(PAGE)
    assert page.status_code == 200
    assert f"<code>{scenario.CUSTOMER}</code>" in page.text
    assert codes(page.text) == api_codes(signed_in) == {"access": -5, "pro": -5}
    assert page.text.count('<div class="band"') == 2 and "<svg" in page.text
    assert "5→4" in page.text and "4→-5" in page.text  # the transitions, labelled
    for event_type in ["customer.subscription.created", "invoice.paid"]:
        assert f"<code>{event_type}</code>" in page.text
    assert 'name="at"' in page.text and 'name="known_at"' in page.text
    assert page.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("moment", sorted(scenario.INSTANTS))
def test_the_instant_picker_answers_what_the_api_answers(
    signed_in: TestClient, moment: str
) -> None:
    at = iso(scenario.INSTANTS[moment])
    page = signed_in.get(PAGE, params={"at": at})
    assert page.status_code == 200
    expected = {"renewing": 5, "cancelling": 4, "ended": -5}[moment]
    assert codes(page.text) == api_codes(signed_in, at=at) == {"access": expected, "pro": expected}


def test_known_at_answers_as_the_engine_knew_then(signed_in: TestClient) -> None:
    """Known at an instant before anything was recorded (the catalogue included): no
    permission existed yet, as the API says too."""
    before_recording = iso(scenario.INSTANTS["ended"])
    params = {"at": iso(scenario.INSTANTS["renewing"]), "known_at": before_recording}
    page = signed_in.get(PAGE, params=params)
    assert page.status_code == 200 and f'value="{before_recording}"' in page.text
    assert codes(page.text) == api_codes(signed_in, **params) == {}
    assert "The catalogue had no permissions then" in page.text


def test_each_code_links_to_the_events_it_rests_on_and_their_raw_payload(
    signed_in: TestClient,
) -> None:
    page = signed_in.get(PAGE, params={"at": iso(scenario.INSTANTS["cancelling"])})
    links = re.findall(r'class="because" href="([^"]+)"', page.text)
    assert f"{PAGE}/stripe-events/evt_console_cancel" in links
    found = signed_in.get(f"{PAGE}/stripe-events/evt_console_cancel")
    assert found.status_code == 303
    shown = signed_in.get(found.headers["location"])
    raw = re.search(r'<pre id="raw">(.*?)</pre>', shown.text, re.S)
    assert raw is not None
    body = raw.group(1).replace("&#34;", '"').replace("&quot;", '"')
    assert json.loads(body)["id"] == "evt_console_cancel"
    assert '<pre id="formatted">{\n  &#34;id&#34;: &#34;evt_console_cancel&#34;' in shown.text


def test_every_timeline_row_links_to_its_payload(signed_in: TestClient) -> None:
    page = signed_in.get(PAGE)
    links = re.findall(rf'href="({re.escape(PAGE)}/events/\d+)">payload', page.text)
    assert len(links) == 5  # the registration and the four Stripe events
    assert all(signed_in.get(link).status_code == 200 for link in links)


def test_the_timeline_is_paginated(signed_in: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(customer_pages, "TIMELINE_PAGE", 2)
    seen: list[str] = []
    url = f"{PAGE}?after=0"
    while url:
        page = signed_in.get(url.replace("&amp;", "&"))
        rows = re.findall(r"/events/(\d+)\">payload", page.text)
        assert 1 <= len(rows) <= 2
        seen += rows
        following = re.search(r'rel="next" href="([^"]+)"', page.text)
        url = following.group(1) if following else ""
    assert len(seen) == len(set(seen)) == 5


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"{PAGE}?at=yesterday", 400),
        (f"{PAGE}?known_at=2025-13-45", 400),
        (f"{PAGE}?after=-1", 400),
        (f"{PAGE}?after=abc", 400),
        ("/console/customers/nobody", 404),
        (f"{PAGE}/events/999999", 404),
        (f"{PAGE}/stripe-events/evt_nope", 404),
        ("/console/customers/nobody/export", 404),
        ("/console/no/such/page", 404),
        (f"/console/customers/{quote('a' * 300)}", 400),
    ],
)
def test_bad_input_gets_a_readable_page_never_a_500(
    signed_in: TestClient, path: str, status: int
) -> None:
    response = signed_in.get(path)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    assert "Traceback" not in response.text


def test_the_export_downloads_and_verifies(signed_in: TestClient, tmp_path: Path) -> None:
    response = signed_in.get(f"{PAGE}/export")
    assert response.status_code == 200
    assert response.headers["content-disposition"] == (
        f'attachment; filename="{scenario.CUSTOMID}-history.jsonl"'
    )
    verdict = verify_lines(response.text.splitlines())
    assert verdict.ok and verdict.count == 5
    assert response.headers["x-chain-last-hash"] == verdict.last_hash
    saved = tmp_path / "history.jsonl"
    saved.write_bytes(response.content)
    result = CliRunner().invoke(main, ["audit", "verify", str(saved)])
    assert result.exit_code == 0, result.output
    assert verdict.last_hash in result.output


# --- the app page --------------------------------------------------------------------------------


def test_the_app_page_shows_webhooks_per_minute_lag_and_rejections(signed_in: TestClient) -> None:
    bad = post_webhook(signed_in, scenario.bodies()[0], headers={"Stripe-Signature": "t=1,v1=00"})
    assert bad.status_code == 400
    page = signed_in.get("/console/app")
    assert page.status_code == 200
    assert re.search(r'id="per-minute">4 in the last', page.text)  # the four Stripe events
    assert 'id="lag"' in page.text
    assert "invalid Stripe signature" in page.text


def test_panels_show_only_when_they_have_rows(
    signed_in: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def differences(engine, app_id):
        return app_pages.Panel("Reconcile differences", ["customid"], [[scenario.CUSTOMID]])

    def deliveries(engine, app_id):
        return app_pages.Panel("Failed deliveries", ["id"], [])

    monkeypatch.setattr(app_pages, "PANELS", [differences, deliveries])
    page = signed_in.get("/console/app")
    assert "Reconcile differences" in page.text and scenario.CUSTOMID in page.text
    assert "Failed deliveries" not in page.text


def test_the_last_reconciles_differences_are_on_the_app_page(signed_in: TestClient) -> None:
    difference = {
        "customid": "u_drifted",
        "permissionId": "premium",
        "engine": {"entitlement": 5, "rule": "subscription.active"},
        "stripe": {"entitlement": -5, "rule": "subscription.canceled", "state": "sub_9 canceled"},
        "objectIds": ["sub_9", "cus_9"],
    }
    runs = SyncRuns(signed_in.app.state.engine.log)
    runs.record("demo", SyncRun("reconcile", 1_700_000_000, 1_700_000_060, {}, [difference]))
    page = signed_in.get("/console/app").text
    assert "Differences from Stripe" in page
    assert "u_drifted" in page and "sub_9 canceled" in page and "sub_9, cus_9" in page
