"""One-time purchases through Checkout: products resolved from line items fetched from Stripe.

A fake Stripe API is served on loopback by uvicorn (a real socket, so that connection refused and
timeouts are the real thing), and the engine's resolver talks to it through the stripe library with
the app's restricted key. Webhook ingestion never waits for it: Stripe being down only delays the
purchase's resolution. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from adapters.bootstrap import Engine
from adapters.cli.main import main as cli
from adapters.config import AppConfig
from adapters.http.asgi import create_app
from adapters.stripe.api import StripeApi
from adapters.usecases import line_items
from adapters.usecases.line_items import CheckoutResolver
from domain.aggregates import Buyer
from tests.conftest import API_KEYS, FIXTURES, config_doc, post_webhook, settle

STRIPE_KEY = "rk_test_resolver"
AUTH = {"Authorization": f"Bearer {API_KEYS['demo']}"}
CATALOGUE = {
    "skus": [{"skuId": "lifetime", "productId": "prod_LIFETIME"}],
    "permissions": [{"permissionId": "premium", "skuIds": ["lifetime"]}],
}


# --- A fake Stripe API on loopback --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Stripe's answers for a key it does not accept, one without the permission, and a rate limit.
REFUSALS = {
    "unauthorized": (401, "invalid_request_error", "Invalid API Key provided: rk_test_***"),
    "forbidden": (
        403,
        "invalid_request_error",
        "The provided key does not have the required permissions for this endpoint",
    ),
    "rate_limited": (429, "rate_limit_error", "Too many requests"),
}


class FakeStripe:
    """`GET /v1/checkout/sessions/{id}/line_items` with pagination, and ways to misbehave."""

    def __init__(self) -> None:
        self.port = free_port()  # fixed before start, so that "down" means connection refused
        self.url = f"http://127.0.0.1:{self.port}"
        self.line_items: dict[str, list[dict[str, Any]]] = {}
        # ok | error (HTTP 500) | slow (answers after `delay` seconds) | one of `REFUSALS`
        self.mode = "ok"
        self.delay = 1.5
        self.page_size = 100
        self.hold = 0  # answer no request before this many have arrived (races)
        self.requests: list[dict[str, Any]] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    async def _line_items(self, request: Request) -> JSONResponse:
        session_id = request.path_params["session_id"]
        self.requests.append({"session": session_id, "auth": request.headers.get("authorization")})
        await self._wait_for_others()
        if self.mode == "error":
            return JSONResponse({"error": {"type": "api_error", "message": "boom"}}, 500)
        if self.mode in REFUSALS:
            status, kind, message = REFUSALS[self.mode]
            return JSONResponse({"error": {"type": kind, "message": message}}, status)
        if self.mode == "slow":
            await asyncio.sleep(self.delay)
        if session_id not in self.line_items:
            error = {"type": "invalid_request_error", "message": "No such checkout.session"}
            return JSONResponse({"error": error}, 404)
        return JSONResponse(self._page(self.line_items[session_id], request))

    async def _wait_for_others(self) -> None:
        deadline = time.monotonic() + 5
        while len(self.requests) < self.hold and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _page(self, items: list[dict[str, Any]], request: Request) -> dict[str, Any]:
        after = request.query_params.get("starting_after")
        start = next((i + 1 for i, item in enumerate(items) if item["id"] == after), 0)
        size = min(int(request.query_params.get("limit", 10)), self.page_size)
        page = items[start : start + size]
        return {"object": "list", "data": page, "has_more": start + size < len(items)}

    def start(self) -> None:
        app = Starlette(
            routes=[Route("/v1/checkout/sessions/{session_id}/line_items", self._line_items)]
        )
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the fake Stripe API did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._server = self._thread = None


@pytest.fixture
def fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def settings_doc(database_url: str, fake_stripe: FakeStripe) -> dict[str, Any]:
    """The shared configuration, with a Stripe key for the demo app only."""
    doc = config_doc(database_url)
    doc["apps"]["demo"].update(stripe_api_key=STRIPE_KEY, stripe_api_base=fake_stripe.url)
    return doc


# --- Helpers ------------------------------------------------------------------------------------


def real_line_item(item_id: str, product: str) -> dict[str, Any]:
    """Stripe's own line item fixture (an `item` object), naming our product."""
    resources = json.loads((FIXTURES / "objects" / "fixtures3.json").read_text())["resources"]
    item = copy.deepcopy(resources["item"])
    item["id"] = item_id
    item["price"]["product"] = product
    return item


def checkout_event(session_id: str, customid: str) -> str:
    """The real 2020-08-27 checkout, made a guest payment-mode one with no product hint."""
    event = json.loads(
        (FIXTURES / "events" / "checkout.session.completed__srm__1.json").read_text()
    )
    event["id"] = f"evt_{session_id}"
    event["data"]["object"].update(
        id=session_id,
        payment_intent=f"pi_{session_id}",
        customer=None,
        metadata={"customid": customid},
        payment_status="paid",
        mode="payment",
    )
    return json.dumps(event)


def deliver_checkout(client: TestClient, session_id: str, customid: str, app_id="demo") -> None:
    response = post_webhook(client, checkout_event(session_id, customid), app_id)
    assert response.status_code == 200, response.text
    settle(client.app.state.engine)


def setup_catalogue(client: TestClient) -> None:
    response = client.put("/v1/catalogue", json=CATALOGUE, headers=AUTH)
    assert response.status_code == 200, response.text


def premium(client: TestClient, customid: str, **params: str) -> int:
    params = {"customid": customid, **params}
    response = client.get("/v1/permissions", params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    (permission,) = response.json()["all"]
    return permission["entitlement"]


def purchase_resolved(client: TestClient, customid: str) -> bool:
    response = client.get("/v1/subscriber", params={"customid": customid}, headers=AUTH)
    (purchase,) = response.json()["purchases"]
    return purchase["resolved"]


def resolve_pass(engine: Engine, resolver: CheckoutResolver | None = None, **options):
    """One pass of the resolver, then the projector applies what it recorded."""
    summary = (resolver or engine.resolver).run_once(**options)
    settle(engine)
    return summary


def resolutions(engine: Engine) -> list[Buyer.LineItemsResolved]:
    topic = Buyer.LineItemsResolved.TOPIC
    notifications = engine.log.recorder.select_notifications(0, 10_000, topics=[topic])
    return [engine.log.mapper.to_domain_event(n) for n in notifications]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resolver_for(engine: Engine, clock: Clock, timeout: float = 2.0) -> CheckoutResolver:
    def api_for(app: AppConfig) -> StripeApi:
        assert app.stripe_api_key is not None
        return StripeApi(app.stripe_api_key, app.stripe_api_base, timeout=timeout)

    return CheckoutResolver(engine.log, engine.follower, engine.settings.apps, api_for, clock)


# --- Resolution ---------------------------------------------------------------------------------


def test_a_checkout_without_line_items_grants_once_they_are_fetched(client, engine, fake_stripe):
    setup_catalogue(client)
    fake_stripe.line_items["cs_one"] = [real_line_item("li_1", "prod_LIFETIME")]
    deliver_checkout(client, "cs_one", "buyer-1")
    assert premium(client, "buyer-1") == -9
    assert purchase_resolved(client, "buyer-1") is False
    assert fake_stripe.requests == []  # nothing is fetched on the webhook's request path

    summary = resolve_pass(engine)

    assert (summary.found, summary.resolved, summary.failed) == (1, 1, 0)
    (resolved,) = resolutions(engine)
    assert resolved.session_id == "cs_one"
    assert json.loads(resolved.line_items) == fake_stripe.line_items["cs_one"]
    assert fake_stripe.requests == [{"session": "cs_one", "auth": f"Bearer {STRIPE_KEY}"}]
    assert premium(client, "buyer-1") == 3
    assert purchase_resolved(client, "buyer-1") is True


def test_line_items_filled_in_later_are_seen_by_a_history_kept_between_questions(
    client, engine, fake_stripe
):
    """A long history's next read after a write reads only the rows added since, and its
    checkouts: their line items are filled in in place, at the position they were received."""
    engine.entitlements.history_kept_from = 0  # every history is long: kept between reads
    setup_catalogue(client)
    fake_stripe.line_items["cs_kept"] = [real_line_item("li_1", "prod_LIFETIME")]
    deliver_checkout(client, "cs_kept", "buyer-1")
    at = str(int(time.time()) + 3600)
    assert premium(client, "buyer-1") == premium(client, "buyer-1", at=at) == -9

    assert resolve_pass(engine).resolved == 1

    assert premium(client, "buyer-1") == premium(client, "buyer-1", at=at) == 3


def test_every_page_of_line_items_is_fetched(client, engine, fake_stripe):
    setup_catalogue(client)
    items = [real_line_item(f"li_{n}", f"prod_OTHER{n}") for n in range(4)]
    fake_stripe.line_items["cs_pages"] = [*items, real_line_item("li_last", "prod_LIFETIME")]
    fake_stripe.page_size = 2
    deliver_checkout(client, "cs_pages", "buyer-2")

    resolve_pass(engine)

    assert len(fake_stripe.requests) == 3
    (resolved,) = resolutions(engine)
    assert [item["id"] for item in json.loads(resolved.line_items)] == [
        "li_0",
        "li_1",
        "li_2",
        "li_3",
        "li_last",
    ]
    assert premium(client, "buyer-2") == 3


def test_resolving_twice_appends_once(client, engine, fake_stripe):
    setup_catalogue(client)
    fake_stripe.line_items["cs_twice"] = [real_line_item("li_1", "prod_LIFETIME")]
    deliver_checkout(client, "cs_twice", "buyer-3")
    engine.follower.catch_up()
    with engine.follower.reading() as cursor:
        (checkout,) = line_items.unresolved_checkouts(cursor, ["demo"])

    assert resolve_pass(engine).resolved == 1
    assert resolve_pass(engine).found == 0
    # Another process, whose read model has not applied the resolution yet, appends nothing.
    assert resolver_for(engine, Clock())._resolve_checkout(checkout) is False
    assert len(resolutions(engine)) == 1
    assert len(fake_stripe.requests) == 1


def test_two_resolvers_racing_append_once(client, engine, fake_stripe):
    setup_catalogue(client)
    fake_stripe.line_items["cs_race"] = [real_line_item("li_1", "prod_LIFETIME")]
    fake_stripe.hold = 2  # both fetch before either appends
    deliver_checkout(client, "cs_race", "buyer-4")
    engine.follower.catch_up()
    resolvers = [resolver_for(engine, Clock()) for _ in range(2)]
    summaries: list[line_items.PassSummary] = []
    threads = [
        threading.Thread(target=lambda r=r: summaries.append(r.run_once())) for r in resolvers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)

    assert len(fake_stripe.requests) == 2
    assert sorted((s.resolved, s.already) for s in summaries) == [(0, 1), (1, 0)]
    assert len(resolutions(engine)) == 1
    settle(engine)
    assert premium(client, "buyer-4") == 3


def test_apps_without_a_stripe_key_are_left_unresolved(client, engine, fake_stripe):
    deliver_checkout(client, "cs_other", "buyer-5", app_id="other")
    assert resolve_pass(engine).found == 0
    assert fake_stripe.requests == []


# --- Stripe unreachable, erroring or slow -------------------------------------------------------


@pytest.mark.parametrize("outage", ["connection refused", "http 500", "timeout"])
def test_stripe_down_delays_the_purchase_and_never_the_webhook(client, engine, fake_stripe, outage):
    setup_catalogue(client)
    fake_stripe.line_items["cs_down"] = [real_line_item("li_1", "prod_LIFETIME")]
    if outage == "connection refused":
        fake_stripe.stop()
    fake_stripe.mode = {"http 500": "error", "timeout": "slow"}.get(outage, "ok")
    clock = Clock()
    resolver = resolver_for(engine, clock, timeout=0.3)

    deliver_checkout(client, "cs_down", "buyer-6")  # answers 200: Stripe is not asked
    failed = resolve_pass(engine, resolver)

    assert (failed.found, failed.resolved, failed.failed) == (1, 0, 1)
    assert "cs_down" in failed.errors[0]
    assert resolutions(engine) == []
    assert premium(client, "buyer-6") == -9
    assert purchase_resolved(client, "buyer-6") is False

    # Stripe comes back. The session waits for its backoff, then resolves.
    fake_stripe.mode = "ok"
    if outage == "connection refused":
        fake_stripe.start()
    asked = len(fake_stripe.requests)
    assert resolve_pass(engine, resolver).resolved == 0
    assert len(fake_stripe.requests) == asked  # not retried before its backoff has run out
    clock.now += line_items.FIRST_RETRY * 1.5
    assert resolve_pass(engine, resolver).resolved == 1
    assert len(resolutions(engine)) == 1
    assert premium(client, "buyer-6") == 3


def test_backoff_grows_with_each_failure(engine, fake_stripe):
    clock = Clock()
    resolver = resolver_for(engine, clock)
    pending = line_items.Pending(line_items.UnresolvedCheckout("demo", "b", "cs_x"))
    delays = []
    for _ in range(10):
        resolver._back_off(pending)
        delays.append(pending.next_try - clock.now)
    assert delays[0] <= line_items.FIRST_RETRY * 1.2
    assert delays[1] > delays[0]
    assert max(delays) <= line_items.LAST_RETRY * 1.2


# --- In the server, and on the command line -----------------------------------------------------


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    """A TOML file for `doc` (strings and lists of strings only: JSON quoting is TOML's)."""
    lines = [f"[database]\nurl = {json.dumps(doc['database']['url'])}\n"]
    for app_id, app in doc["apps"].items():
        lines.append(f"[apps.{app_id}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in app.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def test_the_server_resolves_checkouts_in_the_background(
    settings_doc, fake_stripe, tmp_path, monkeypatch
):
    monkeypatch.setenv("ENTITLEMENTS_CONFIG", str(write_config(tmp_path / "c.toml", settings_doc)))
    monkeypatch.setattr(line_items, "POLL_INTERVAL", 0.05)
    monkeypatch.setattr(line_items, "FIRST_RETRY", 0.1)
    fake_stripe.line_items["cs_bg"] = [real_line_item("li_1", "prod_LIFETIME")]
    fake_stripe.mode = "error"  # down at first: the webhook is recorded all the same
    with TestClient(create_app()) as client:
        setup_catalogue(client)
        deliver_checkout(client, "cs_bg", "buyer-7")
        wait_until(lambda: len(fake_stripe.requests) >= 1)
        assert premium(client, "buyer-7") == -9
        fake_stripe.mode = "ok"
        wait_until(lambda: premium(client, "buyer-7") == 3)


def wait_until(condition: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_cli_resolves_in_one_pass_and_fails_while_stripe_is_down(
    client, engine, settings_doc, fake_stripe, tmp_path, monkeypatch
):
    monkeypatch.setenv("ENTITLEMENTS_CONFIG", str(write_config(tmp_path / "c.toml", settings_doc)))
    setup_catalogue(client)
    fake_stripe.line_items["cs_cli"] = [real_line_item("li_1", "prod_LIFETIME")]
    deliver_checkout(client, "cs_cli", "buyer-8")
    fake_stripe.mode = "error"

    down = CliRunner().invoke(cli, ["resolve-checkouts"])
    assert down.exit_code == 1
    assert "0 resolved" in down.output and "1 failed" in down.output
    assert "HTTP 500" in down.output

    fake_stripe.mode = "ok"
    up = CliRunner().invoke(cli, ["resolve-checkouts"])
    assert up.exit_code == 0, up.output
    assert "1 resolved" in up.output
    # The CLI is another process: the server sees its write once its follower has polled
    # (every 0.25 s in the background, which this test client does not run).
    engine.follower.catch_up()
    assert premium(client, "buyer-8") == 3


# --- Stripe refusing for good: recorded once, shown, retried only when asked --------------------


def refusals(engine: Engine) -> list[Buyer.LineItemsUnresolvable]:
    topic = Buyer.LineItemsUnresolvable.TOPIC
    notifications = engine.log.recorder.select_notifications(0, 10_000, topics=[topic])
    return [engine.log.mapper.to_domain_event(n) for n in notifications]


def the_purchase(client: TestClient, customid: str) -> dict[str, Any]:
    response = client.get("/v1/subscriber", params={"customid": customid}, headers=AUTH)
    (purchase,) = response.json()["purchases"]
    return purchase


def refused_metric(client: TestClient, app_id: str = "demo") -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'entitlements_checkouts_unresolvable{{app="{app_id}"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no entitlements_checkouts_unresolvable metric")


@pytest.mark.parametrize("refusal", ["no such session", "unauthorized", "forbidden"])
def test_a_checkout_stripe_refuses_for_good_is_recorded_once_and_not_retried(
    client, engine, fake_stripe, refusal
):
    setup_catalogue(client)
    if refusal != "no such session":  # otherwise Stripe knows no such session: 404
        fake_stripe.line_items["cs_gone"] = [real_line_item("li_1", "prod_LIFETIME")]
        fake_stripe.mode = refusal
    clock = Clock()
    resolver = resolver_for(engine, clock)
    deliver_checkout(client, "cs_gone", "buyer-9")

    refused = resolve_pass(engine, resolver)

    assert (refused.found, refused.resolved, refused.failed, refused.refused) == (1, 0, 0, 1)
    (recorded,) = refusals(engine)
    status = {"no such session": 404, "unauthorized": 401, "forbidden": 403}[refusal]
    assert (recorded.session_id, recorded.status) == ("cs_gone", status)
    settle(engine)
    purchase = the_purchase(client, "buyer-9")
    assert purchase["resolved"] is False
    assert purchase["resolutionError"] == f"HTTP {status}: {recorded.reason}"
    assert recorded.reason  # Stripe's own message
    assert refused_metric(client) == 1
    assert premium(client, "buyer-9") == -9

    asked = len(fake_stripe.requests)
    clock.now += line_items.LAST_RETRY * 10  # however long one waits
    again = resolve_pass(engine, resolver)
    assert (again.found, again.refused) == (0, 0)
    assert len(fake_stripe.requests) == asked
    assert len(refusals(engine)) == 1  # recorded once

    # Fixed on Stripe's side: only an explicit retry asks again.
    fake_stripe.mode = "ok"
    fake_stripe.line_items["cs_gone"] = [real_line_item("li_1", "prod_LIFETIME")]
    assert resolve_pass(engine, resolver).resolved == 0
    assert resolve_pass(engine, resolver, retry_failed=True).resolved == 1
    settle(engine)
    assert premium(client, "buyer-9") == 3
    assert the_purchase(client, "buyer-9")["resolutionError"] is None
    assert refused_metric(client) == 0


def test_a_rate_limit_keeps_its_backoff(client, engine, fake_stripe):
    setup_catalogue(client)
    fake_stripe.line_items["cs_busy"] = [real_line_item("li_1", "prod_LIFETIME")]
    fake_stripe.mode = "rate_limited"
    clock = Clock()
    resolver = resolver_for(engine, clock)
    deliver_checkout(client, "cs_busy", "buyer-10")

    busy = resolve_pass(engine, resolver)

    assert (busy.failed, busy.refused) == (1, 0)
    assert "HTTP 429" in busy.errors[0]
    assert refusals(engine) == []
    fake_stripe.mode = "ok"
    clock.now += line_items.FIRST_RETRY * 1.5
    assert resolve_pass(engine, resolver).resolved == 1


def test_the_cli_reports_a_refusal_and_retries_it_only_with_retry_failed(
    client, engine, settings_doc, fake_stripe, tmp_path, monkeypatch
):
    monkeypatch.setenv("ENTITLEMENTS_CONFIG", str(write_config(tmp_path / "c.toml", settings_doc)))
    setup_catalogue(client)
    deliver_checkout(client, "cs_unknown_to_stripe", "buyer-11")

    refused = CliRunner().invoke(cli, ["resolve-checkouts"])
    assert refused.exit_code == 1
    assert "1 refused by Stripe" in refused.output and "HTTP 404" in refused.output

    quiet = CliRunner().invoke(cli, ["resolve-checkouts"])
    assert quiet.exit_code == 0, quiet.output
    assert "0 unresolved checkout(s)" in quiet.output

    fake_stripe.line_items["cs_unknown_to_stripe"] = [real_line_item("li_1", "prod_LIFETIME")]
    retried = CliRunner().invoke(cli, ["resolve-checkouts", "--retry-failed"])
    assert retried.exit_code == 0, retried.output
    assert "1 resolved" in retried.output
    settle(engine)
    assert premium(client, "buyer-11") == 3


def test_a_refusal_is_in_the_customers_history(client, engine, fake_stripe):
    deliver_checkout(client, "cs_no_such", "buyer-12")
    resolve_pass(engine)
    settle(engine)
    history = client.get("/v1/customers/buyer-12/history", headers=AUTH).json()["events"]
    (refusal,) = [e for e in history if e["eventType"] == "LineItemsUnresolvable"]
    assert (refusal["checkoutSessionId"], refusal["status"]) == ("cs_no_such", 404)
    assert refusal["reason"]
