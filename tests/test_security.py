"""Reliability and security of the HTTP layer: rate limits, body caps, timeouts, structured logs
that never hold a secret, refused bad input, and tenants isolated on every route."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from adapters.bootstrap import bootstrap
from adapters.config import ConfigError, settings_from_dict
from adapters.http.app import _api_error, build_http_app
from adapters.http.errors import ApiError
from adapters.http.limits import BodyLimitMiddleware, RateLimited, RateLimiter, TimeoutMiddleware
from adapters.process.logging_setup import SECRET_SHAPES, JsonFormatter, log_config, redact
from tests.conftest import API_KEYS, SECRETS, config_doc, make_event, post_webhook, signed_headers
from tests.test_entitlements_api import (
    ALI,
    ALI_UPDATED,
    AUTH,
    CATALOGUE,
    OTHER_AUTH,
    connect,
    deliver,
    real,
    setup_catalogue,
)
from tests.test_webhooks import history as buyer_history

STRIPE_KEY = "rk_test_51NeverLogThisRestrictedKey"


def sqlite_client(tmp_path: Path, server: dict[str, Any] | None = None, **apps: Any) -> TestClient:
    """A client on a fresh SQLite database, with `[server]` settings and extra app keys."""
    doc = config_doc(f"sqlite:///{tmp_path / 'e.sqlite'}", server=server or {})
    for app_id, extra in apps.items():
        doc["apps"][app_id].update(extra)
    engine = bootstrap(settings_from_dict(doc, env={}))
    client = TestClient(build_http_app(engine), raise_server_exceptions=False)
    client.engine = engine  # type: ignore[attr-defined]  # closed by the fixture
    return client


@pytest.fixture
def make_client(tmp_path: Path):
    made: list[TestClient] = []

    def make(server: dict[str, Any] | None = None, **apps: Any) -> TestClient:
        made.append(sqlite_client(tmp_path, server, **apps))
        return made[-1]

    yield make
    for client in made:
        client.engine.close()  # type: ignore[attr-defined]


def new_event() -> str:
    return make_event("customer.updated", {"id": "cus_log", "object": "customer"})


# --- rate limits -------------------------------------------------------------------------------


def test_rest_calls_beyond_the_burst_get_429_1200_per_app(make_client) -> None:
    client = make_client({"rate_limit_per_second": 0.001, "rate_limit_burst": 2})
    answers = [client.get("/v1/catalogue", headers=AUTH) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert answers[2].json() == {
        "status": 429,
        "error": {"code": 1200, "description": "Too many requests"},
    }
    assert int(answers[2].headers["Retry-After"]) >= 1
    # Another app has its own budget; a wrong key spends nobody's (it is refused first).
    assert client.get("/v1/catalogue", headers=OTHER_AUTH).status_code == 200
    assert client.get("/v1/catalogue", headers={"Authorization": "Bearer x"}).status_code == 401


def test_a_bucket_refills_at_the_configured_rate() -> None:
    now = [100.0]
    limiter = RateLimiter(rate=2.0, burst=2, clock=lambda: now[0])
    limiter.check("demo")
    limiter.check("demo")
    with pytest.raises(RateLimited) as refused:
        limiter.check("demo")
    assert refused.value.retry_after == pytest.approx(0.5)
    now[0] += 0.5
    limiter.check("demo")
    RateLimiter(rate=0, burst=0).check("demo")  # 0 disables the limit


def test_webhooks_are_not_rate_limited_by_default(make_client) -> None:
    client = make_client({"rate_limit_per_second": 0.001, "rate_limit_burst": 1})
    assert all(post_webhook(client, new_event()).status_code == 200 for _ in range(5))


def test_a_configured_webhook_limit_counts_only_verified_events(make_client) -> None:
    client = make_client({"webhook_rate_limit_per_second": 0.001, "webhook_rate_limit_burst": 1})
    unsigned = {"Stripe-Signature": "t=1,v1=00"}
    for _ in range(3):  # forgeries never spend Stripe's budget
        assert post_webhook(client, new_event(), headers=unsigned).status_code == 400
    assert post_webhook(client, new_event()).status_code == 200
    refused = post_webhook(client, new_event())
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, 1200)


def test_limits_are_validated_when_the_configuration_is_read() -> None:
    doc = config_doc("sqlite:///x", server={"rate_limit_per_second": -1})
    with pytest.raises(ConfigError, match="rate_limit_per_second"):
        settings_from_dict(doc, env={})


# --- body caps and timeouts --------------------------------------------------------------------


BODY_ROUTES = [
    ("put", "/v1/catalogue"),
    ("post", "/v1/catalogue/preview"),
    ("post", "/v1/connect_stripe"),
    ("post", "/v1/stripe/webhooks/demo"),
]


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
def test_every_route_that_reads_a_body_refuses_one_over_the_limit(
    make_client, method: str, path: str
) -> None:
    client = make_client({"max_body_bytes": 1000})
    body = json.dumps({"padding": "x" * 2000})
    headers = {**AUTH, **signed_headers(body)}
    declared = client.request(method, path, content=body, headers=headers)
    streamed = client.request(method, path, content=iter([body.encode()]), headers=headers)
    for response in (declared, streamed):  # with and without a Content-Length
        assert response.status_code == 413
        assert response.json()["error"]["code"] == 1005


def test_a_route_that_forgets_to_cap_its_body_is_capped_all_the_same() -> None:
    async def careless(request: Request) -> JSONResponse:
        return JSONResponse({"size": len(await request.body())})

    app = Starlette(
        routes=[Route("/careless", careless, methods=["POST"])],
        exception_handlers={ApiError: _api_error},
    )
    client = TestClient(BodyLimitMiddleware(app, max_bytes=100))
    assert client.post("/careless", content=b"x" * 100).json() == {"size": 100}
    chunks = iter([b"x" * 60, b"x" * 60])
    assert client.post("/careless", content=chunks).status_code == 413


def test_a_request_over_the_timeout_is_answered_503_at_once() -> None:
    async def slow(request: Request) -> JSONResponse:
        await asyncio.sleep(5)
        return JSONResponse({})

    async def fast(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/slow", slow), Route("/fast", fast)])
    client = TestClient(TimeoutMiddleware(app, seconds=0.2))
    assert client.get("/fast").json() == {"ok": True}
    response = client.get("/slow")
    assert response.status_code == 503
    assert response.json()["error"] == {
        "code": 1005,
        "description": "request timed out, retry later",
    }


# --- structured logs, and secrets kept out of logs, errors and metrics -------------------------


def as_json_lines(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in records]
    assert all("\n" not in line for line in lines if "traceback" not in line)
    return [json.loads(line) for line in lines]


def test_a_recorded_webhook_logs_one_json_line_with_its_event_and_app(client, caplog) -> None:
    caplog.set_level(logging.INFO)
    raw = new_event()
    assert post_webhook(client, raw).status_code == 200
    lines = [line for line in as_json_lines(caplog.records) if line.get("stripe_event_id")]
    assert len(lines) == 1
    line = lines[0]
    assert line["stripe_event_id"] == json.loads(raw)["id"]
    assert (line["app_id"], line["stripe_type"], line["outcome"]) == (
        "demo",
        "customer.updated",
        "recorded",
    )
    assert {"timestamp", "level", "logger", "message"} <= set(line)
    assert line["level"] == "INFO" and line["logger"] == "entitlements.webhooks"


def test_secrets_never_appear_in_logs_error_bodies_or_metrics(make_client, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(demo={"stripe_api_key": STRIPE_KEY})
    secrets = [*SECRETS.values(), *API_KEYS.values(), STRIPE_KEY]
    raw = new_event()
    answers = [
        post_webhook(client, raw),
        post_webhook(client, raw, app_id="other", headers=signed_headers(raw, "demo")),
        post_webhook(client, raw, headers={"Stripe-Signature": f"t=1,v1={SECRETS['demo']}"}),
        post_webhook(client, "{not json"),
        post_webhook(client, raw, app_id="nobody", headers=signed_headers(raw, "demo")),
        client.get("/v1/catalogue", headers={"Authorization": f"Bearer {SECRETS['demo']}"}),
        client.get("/v1/catalogue", headers={"Authorization": f"Bearer {API_KEYS['demo']}x"}),
        client.get("/v1/permissions", params={"customid": "x", "at": "soon"}, headers=AUTH),
        client.put("/v1/catalogue", content=b"{bad", headers=AUTH),
    ]
    texts = [r.text for r in answers] + [client.get("/metrics").text]
    texts += [json.dumps(line) for line in as_json_lines(caplog.records)]
    texts += [str(vars(record)) for record in caplog.records]  # before any redaction
    for secret in secrets:
        assert not [t for t in texts if secret in t], secret


def test_log_lines_are_written_by_a_thread_of_their_own_in_order_and_all_by_exit() -> None:
    """The server's handler (`log_config`) only queues records: a thread formats and writes
    them, in order, and closing it (`logging.shutdown` at exit) writes what is left."""
    stream = io.StringIO()
    config = log_config()
    handler = config["handlers"]["default"]["()"](stream)
    handler.setFormatter(config["formatters"]["json"]["()"]())
    logger = logging.getLogger("test.background")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        items = ["first"]
        logger.warning("line %d of %s", 1, items, extra={"app_id": "demo"})
        items.append("changed")  # after the call: the line says what it said then
        for n in range(2, 201):
            logger.warning("line %d", n)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed with whsec_abc123")
    finally:
        logger.removeHandler(handler)
        handler.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["message"] == "line 1 of ['first']" and lines[0]["app_id"] == "demo"
    assert [line["message"] for line in lines[1:200]] == [f"line {n}" for n in range(2, 201)]
    assert lines[200]["message"] == "failed with [redacted]"
    assert "ValueError: boom" in lines[200]["traceback"]


def test_anything_shaped_like_a_secret_is_masked_in_a_log_line() -> None:
    line = redact('{"message": "got whsec_abc123 and sk_live_XYZ with Bearer k3y"}')
    assert line == '{"message": "got [redacted] and [redacted] with [redacted]"}'
    assert log_config()["formatters"]["json"]["()"] is JsonFormatter


@pytest.mark.parametrize("secret", ["whsec_ab-cd.ef+gh/ij=", "sk_live_a.b", "rk_test_x-y-z"])
def test_a_secret_with_dashes_dots_or_pluses_is_masked_whole(secret: str) -> None:
    assert redact(f'{{"message": "key {secret} used"}}') == '{"message": "key [redacted] used"}'


# --- bad input is a 400, never a 500 (found by schemathesis and probing) -----------------------


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/permissions", {"customid": "a", "at": "nan"}),
        ("/v1/permissions", {"customid": "a", "at": "1e400"}),
        ("/v1/permissions", {"customid": "a", "known_at": "-inf"}),
        ("/v1/permissions", {"customid": "a\x00b"}),
        ("/v1/subscriber", {"customid": "a\x00b"}),
        ("/v1/customers/a/history", {"since": "nan"}),
        ("/v1/customers/a/history", {"type": "a\x00b"}),
        ("/v1/customers/a/history", {"cursor": "aDE6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk"}),
    ],
)
def test_unusable_parameters_are_400_1010(client, path: str, params: dict[str, str]) -> None:
    connect(client, "a", "cus_A")
    response = client.get(path, params=params, headers=AUTH)
    assert (response.status_code, response.json()["error"]["code"]) == (400, 1010)


DEEP = b"[" * 100_000
LONE = "\\ud800"  # as JSON writes it: a lone UTF-16 surrogate, not encodable as UTF-8


def catalogue_body(sku_id: str = "premium_monthly", permission_id: str = "premium") -> bytes:
    skus = f'[{{"skuId": "{sku_id}", "productId": "prod_A"}}]'
    perms = f'[{{"permissionId": "{permission_id}", "skuIds": ["{sku_id}"]}}]'
    return f'{{"skus": {skus}, "permissions": {perms}}}'.encode()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/connect_stripe", DEEP),
        ("PUT", "/v1/catalogue", DEEP),
        ("POST", "/v1/catalogue/preview", DEEP),
        ("POST", "/v1/connect_stripe", f'{{"customid": "a{LONE}", "customerid": "cus_A"}}'),
        ("POST", "/v1/connect_stripe", f'{{"customid": "a", "customerid": "cus_{LONE}"}}'),
        ("PUT", "/v1/catalogue", catalogue_body(sku_id=f"sku{LONE}")),
        ("POST", "/v1/catalogue/preview", catalogue_body(sku_id=f"sku{LONE}")),
        ("PUT", "/v1/catalogue", catalogue_body(permission_id="pre\\u0000mium")),
    ],
)
def test_bodies_no_store_can_hold_are_400_1010_and_write_nothing(
    client, engine, method: str, path: str, body: bytes | str
) -> None:
    before = engine.log.recorder.max_notification_id()
    response = client.request(method, path, content=body, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json() == {"status": 400, "error": response.json()["error"]}
    assert response.json()["error"]["code"] == 1010
    assert engine.log.recorder.max_notification_id() == before


def test_a_catalogue_file_with_a_nul_or_a_lone_surrogate_is_refused() -> None:
    from domain.catalogue import Catalogue, InvalidCatalogue

    for doc in (
        json.loads(catalogue_body(permission_id="pre\\u0000mium")),
        json.loads(catalogue_body(sku_id=f"sku{LONE}")),
    ):
        with pytest.raises(InvalidCatalogue):
            Catalogue.from_json(doc)


@pytest.mark.parametrize("duration", ["P99999999999D", "P5000Y"])
def test_a_catalogue_duration_out_of_range_is_400_1010(client, duration: str) -> None:
    doc = {"skus": [{"skuId": "a", "productId": "p", "duration": duration}], "permissions": []}
    for method, path in (("put", "/v1/catalogue"), ("post", "/v1/catalogue/preview")):
        response = client.request(method, path, json=doc, headers=AUTH)
        assert (response.status_code, response.json()["error"]["code"]) == (400, 1010)


# --- tenants: an app's key or secret never reads or changes another app's data -----------------
# (permissions, subscriber and catalogue GET: tests/test_entitlements_api.py; history by an
# unknown customid: tests/test_audit.py)


def test_a_webhook_signed_for_one_app_is_refused_on_anothers_endpoint(client, engine) -> None:
    raw = make_event("customer.updated", {"id": "cus_isolated", "object": "customer"})
    response = post_webhook(client, raw, app_id="other", headers=signed_headers(raw, "demo"))
    assert (response.status_code, response.json()["error"]["code"]) == (400, 1010)
    assert buyer_history(engine, "other", "cus_isolated") == []


def test_another_apps_catalogue_writes_and_previews_never_touch_this_app(client) -> None:
    setup_catalogue(client)
    connect(client, "ali", ALI)
    deliver(client, real(ALI_UPDATED))
    theirs = {"skus": [], "permissions": [{"permissionId": "theirs", "skuIds": []}]}
    assert client.put("/v1/catalogue", json=theirs, headers=OTHER_AUTH).status_code == 200
    assert client.get("/v1/catalogue", headers=AUTH).json() == CATALOGUE
    # Their preview compares their customers only: ours are neither counted nor named.
    preview = client.post("/v1/catalogue/preview", json=CATALOGUE, headers=OTHER_AUTH).json()
    assert preview == {"gains": {}, "losses": {}, "customids": 0}
    assert client.post("/v1/catalogue/preview", json=theirs, headers=AUTH).json()["customids"] == 1


def test_linking_another_apps_customer_id_reveals_none_of_its_events(client) -> None:
    setup_catalogue(client)
    connect(client, "ali", ALI)
    deliver(client, real(ALI_UPDATED))
    client.put("/v1/catalogue", json=CATALOGUE, headers=OTHER_AUTH)
    assert connect(client, "ali", ALI, auth=OTHER_AUTH).status_code == 200
    theirs = client.get("/v1/subscriber", params={"customid": "ali"}, headers=OTHER_AUTH).json()
    assert theirs["subscriptions"] == [] and theirs["purchases"] == []
    assert all(p["entitlement"] == -9 for p in theirs["permissions"])
    history = client.get("/v1/customers/ali/history", headers=OTHER_AUTH).json()["events"]
    assert [e["stripeEventId"] for e in history if e["stripeEventId"]] == []
    ours = client.get("/v1/subscriber", params={"customid": "ali"}, headers=AUTH).json()
    assert [s["status"] for s in ours["subscriptions"]] == ["active"]
    assert [c["source"] for c in ours["customers"][0]["claims"]] == ["connect_stripe"]


@settings(max_examples=500)
@given(
    st.lists(
        st.sampled_from(["whsec_", "sk_live_", "rk_test_", "k_test", "bEaReR ", "Bearer", "\t"])
        | st.text(alphabet="abcXYZ019_ \"',", max_size=6)
    ).map("".join)
)
def test_redaction_skips_the_expression_only_when_it_could_not_match(text: str) -> None:
    assert redact(text) == SECRET_SHAPES.sub("[redacted]", text)
