"""POST /v1/stripe/webhooks/{app_id}: every real Stripe event is recorded exactly once, on the
history of the buyer it concerns, with its raw body byte for byte; bad input changes nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from adapters.bootstrap import Engine, bootstrap
from adapters.config import settings_from_dict
from adapters.http.app import build_http_app
from domain.aggregates import Buyer, buyer_id
from tests.conftest import config_doc, fixture_files, make_event, post_webhook, signed_headers


def stored_events(engine: Engine) -> list[Any]:
    recorder = engine.log.recorder
    return list(recorder.select_notifications(start=1, limit=1_000_000))


def history(engine: Engine, app_id: str, buyer_key: str) -> list[Buyer.Event]:
    return engine.log.history(buyer_id(app_id, buyer_key))


def expected_buyer(event: dict[str, Any]) -> str:
    obj = event["data"]["object"]
    customer = obj["id"] if obj.get("object") == "customer" else obj.get("customer")
    if isinstance(customer, dict):
        customer = customer["id"]
    if customer:
        return customer
    payment = obj.get("payment_intent") or (
        obj["id"] if obj["object"] == "payment_intent" else None
    )
    if payment:
        return f"payment:{payment}"
    if obj.get("charge") or obj["object"] == "charge":
        return f"payment:{obj.get('charge') or obj['id']}"
    return f"{obj['object']}:{obj['id']}"


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.name)
def test_every_real_event_is_recorded_once_on_its_buyer(client, engine, path: Path) -> None:
    raw = path.read_text()
    event = json.loads(raw)

    first = post_webhook(client, raw)
    again = post_webhook(client, raw)

    assert first.status_code == 200, first.text
    assert first.json() == {"received": True, "duplicate": False}
    assert again.status_code == 200
    assert again.json() == {"received": True, "duplicate": True}
    recorded = [
        e
        for e in history(engine, "demo", expected_buyer(event))
        if isinstance(e, Buyer.StripeEventRecorded)
    ]
    assert len(recorded) == 1
    (domain_event,) = recorded
    assert domain_event.stripe_event_id == event["id"]
    assert domain_event.stripe_type == event["type"]
    assert domain_event.api_version == event.get("api_version")
    assert domain_event.stripe_created == event["created"]
    assert domain_event.raw == raw  # exactly as received
    assert domain_event.received_at == pytest.approx(time.time(), abs=60)


def test_events_are_typed_by_what_happened(client, engine) -> None:
    cases = {
        "customer.subscription.updated__srm__1.json": Buyer.SubscriptionChanged,
        "invoice.paid__srm__1.json": Buyer.InvoicePaid,
        "invoice.payment_failed__srm__1.json": Buyer.InvoicePaymentFailed,
        "charge.refunded__sse__1.json": Buyer.ChargeRefunded,
        "checkout.session.completed__srm__1.json": Buyer.CheckoutCompleted,
        "invoice.upcoming__srm__1.json": Buyer.OtherStripeEvent,
    }
    for name, expected_class in cases.items():
        raw = (Path(fixture_files()[0]).parent / name).read_text()
        event = json.loads(raw)
        # Several fixtures share an event id; give each its own so that none is a duplicate.
        event["id"] = f"evt_{name}"
        raw = json.dumps(event)
        assert post_webhook(client, raw).status_code == 200
        (recorded,) = [
            e
            for e in history(engine, "demo", expected_buyer(event))
            if getattr(e, "stripe_event_id", None) == event["id"]
        ]
        assert type(recorded) is expected_class


def test_unknown_event_types_are_recorded_not_rejected(client, engine) -> None:
    raw = make_event(
        "radar.early_fraud_warning.created",
        {"id": "issfr_1", "object": "radar.early_fraud_warning", "charge": "ch_9"},
    )
    response = post_webhook(client, raw)
    assert response.status_code == 200
    (recorded,) = history(engine, "demo", "payment:ch_9")[1:]
    assert isinstance(recorded, Buyer.OtherStripeEvent)


def test_events_without_a_customer_land_on_the_buyer_they_name(client, engine) -> None:
    by_customid = make_event(
        "checkout.session.completed",
        {
            "id": "cs_1",
            "object": "checkout.session",
            "customer": None,
            "metadata": {"customid": "user-7"},
            "payment_intent": "pi_1",
        },
    )
    by_reference = make_event(
        "checkout.session.completed",
        {
            "id": "cs_2",
            "object": "checkout.session",
            "customer": None,
            "client_reference_id": "user-8",
            "payment_intent": "pi_2",
        },
    )
    guest_payment = make_event(
        "charge.refunded",
        {"id": "ch_3", "object": "charge", "customer": None, "payment_intent": "pi_3"},
    )
    for raw in (by_customid, by_reference, guest_payment):
        assert post_webhook(client, raw).status_code == 200
    assert len(history(engine, "demo", "customid:user-7")) == 2
    assert len(history(engine, "demo", "customid:user-8")) == 2
    assert len(history(engine, "demo", "payment:pi_3")) == 2


def test_an_invoice_payment_lands_on_the_history_of_the_payment_it_names(client, engine) -> None:
    """invoice_payment.paid names no customer: like that payment's refunds and disputes, it
    goes to the payment's own history, where a customer's history naming the payment finds it.
    pay-rails' real invoice_payment (2026-02), in an envelope of ours."""
    path = Path(fixture_files()[0]).parents[1] / "objects" / "pay-rails"
    data = json.loads((path / "event_data__invoice.updated.json").read_text())
    raw = make_event("invoice_payment.paid", data["object"], api_version="2025-09-30.clover")
    assert post_webhook(client, raw).status_code == 200
    (recorded,) = history(engine, "demo", "payment:pi_3T4AIlGWAy8Dppqh3Vsl9Pya")[1:]
    assert type(recorded) is Buyer.InvoicePaymentPaid
    by_charge = {**data["object"], "id": "inpay_2", "payment": {"type": "charge", "charge": "ch_7"}}
    assert post_webhook(client, make_event("invoice_payment.paid", by_charge)).status_code == 200
    (recorded,) = history(engine, "demo", "payment:ch_7")[1:]
    assert type(recorded) is Buyer.InvoicePaymentPaid


def test_apps_keep_separate_histories(client, engine) -> None:
    raw = make_event("customer.updated", {"id": "cus_shared", "object": "customer"})
    assert post_webhook(client, raw, app_id="demo").json()["duplicate"] is False
    # The same Stripe event delivered to another app's endpoint is that app's own first copy.
    assert post_webhook(client, raw, app_id="other").json()["duplicate"] is False
    assert len(history(engine, "demo", "cus_shared")) == 2
    assert len(history(engine, "other", "cus_shared")) == 2


def test_any_of_an_apps_secrets_verifies_while_one_is_rolled(database_url) -> None:
    from starlette.testclient import TestClient

    from adapters.bootstrap import bootstrap
    from adapters.config import settings_from_dict
    from adapters.http.app import build_http_app
    from adapters.stripe.signature import sign
    from tests.conftest import config_doc

    doc = config_doc(database_url)
    doc["apps"]["demo"]["webhook_secrets"] = ["whsec_old", "whsec_new"]
    engine = bootstrap(settings_from_dict(doc, env={}))
    try:
        with TestClient(build_http_app(engine)) as client:
            for secret in ("whsec_old", "whsec_new"):
                raw = make_event("customer.updated", {"id": "cus_roll", "object": "customer"})
                headers = {"Stripe-Signature": sign(raw, secret, int(time.time()))}
                response = post_webhook(client, raw, headers=headers)
                assert response.status_code == 200, secret
    finally:
        engine.close()


# Bad input: a clear error, nothing written.

VALID = make_event("customer.updated", {"id": "cus_bad", "object": "customer"})


def assert_rejected(response: Any, status: int, words: str, engine: Engine) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status
    assert words in body["error"]["description"]
    assert "whsec_" not in response.text and "Traceback" not in response.text
    assert stored_events(engine) == []


def test_missing_signature_is_refused(client, engine) -> None:
    response = client.post("/v1/stripe/webhooks/demo", content=VALID)
    assert_rejected(response, 400, "missing Stripe-Signature", engine)


def test_wrong_signature_is_refused(client, engine) -> None:
    headers = signed_headers(VALID, app_id="other")  # signed with another app's secret
    response = post_webhook(client, VALID, headers=headers)
    assert_rejected(response, 400, "no signature matches", engine)


def test_a_body_changed_after_signing_is_refused(client, engine) -> None:
    headers = signed_headers(VALID)
    response = post_webhook(client, VALID.replace("cus_bad", "cus_bae"), headers=headers)
    assert_rejected(response, 400, "no signature matches", engine)


def test_an_expired_timestamp_is_refused(client, engine) -> None:
    headers = signed_headers(VALID, timestamp=int(time.time()) - 301)
    response = post_webhook(client, VALID, headers=headers)
    assert_rejected(response, 400, "tolerance", engine)


@pytest.mark.parametrize("ahead", [301, 3600, 10**9])
def test_a_timestamp_beyond_the_tolerance_in_the_future_is_refused(
    client, engine, ahead: int
) -> None:
    headers = signed_headers(VALID, timestamp=int(time.time()) + ahead)
    response = post_webhook(client, VALID, headers=headers)
    assert_rejected(response, 400, "tolerance", engine)


def test_a_timestamp_slightly_ahead_is_accepted_as_clocks_drift(client) -> None:
    headers = signed_headers(VALID, timestamp=int(time.time()) + 60)
    assert post_webhook(client, VALID, headers=headers).status_code == 200


def test_malformed_json_is_refused(client, engine) -> None:
    response = post_webhook(client, '{"id": "evt_1", "type": ')
    assert_rejected(response, 400, "malformed JSON", engine)


@pytest.mark.parametrize(
    "body,missing",
    [
        ("[1, 2]", "JSON object"),
        ('{"type": "customer.updated", "data": {"object": {}}}', "'id'"),
        ('{"id": "evt_1", "data": {"object": {}}}', "'type'"),
        ('{"id": "evt_1", "type": "customer.updated"}', "'data.object'"),
        (
            '{"id": "evt_1", "type": "x", "data": {"object": {}}, "created": "yesterday"}',
            "'created'",
        ),
    ],
)
def test_a_body_that_is_not_a_stripe_event_is_refused(client, engine, body, missing) -> None:
    response = post_webhook(client, body)
    assert_rejected(response, 400, missing, engine)


def test_a_body_that_is_not_utf8_is_refused(client, engine) -> None:
    response = post_webhook(client, b'{"id": "evt_\xff"}', headers={"Stripe-Signature": "t=1,v1=0"})
    assert_rejected(response, 400, "UTF-8", engine)


def test_an_unknown_app_is_refused(client, engine) -> None:
    response = post_webhook(client, VALID, app_id="demo", headers=signed_headers(VALID))
    assert response.status_code == 200  # control: the same body is fine for a known app
    response = client.post("/v1/stripe/webhooks/nope", content=VALID, headers=signed_headers(VALID))
    assert response.status_code == 404
    assert "unknown app" in response.json()["error"]["description"]


def test_an_unknown_apps_404_echoes_only_the_start_of_its_id(client) -> None:
    app_id = "x" * 10_000
    response = client.post(f"/v1/stripe/webhooks/{app_id}", content=VALID)
    assert response.status_code == 404 and len(response.content) < 300
    assert "x" * 64 in response.json()["error"]["description"]


def test_an_unknown_app_is_never_counted_as_a_configured_app_named_unknown(tmp_path) -> None:
    doc = config_doc(f"sqlite:///{tmp_path / 'e.sqlite'}")
    doc["apps"]["unknown"] = {"webhook_secrets": ["whsec_u"], "rest_api_keys": ["u-key"]}
    engine = bootstrap(settings_from_dict(doc, env={}))
    try:
        with TestClient(build_http_app(engine), raise_server_exceptions=False) as test_client:
            before = test_client.get("/metrics").text
            test_client.post("/v1/stripe/webhooks/nobody", content=VALID)
            after = test_client.get("/metrics").text
    finally:
        engine.close()
    assert _sample(after, 'app="unknown"') == _sample(before, 'app="unknown"')
    assert _sample(after, "entitlements_webhooks_unknown_app_total") == (
        _sample(before, "entitlements_webhooks_unknown_app_total") + 1
    )


def _sample(metrics: str, *marks: str) -> float:
    """The sum of the samples whose line has every mark."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if not line.startswith("#") and all(mark in line for mark in marks)
    )


@pytest.mark.parametrize("path", ["/v1/stripe/webhooks/demo/", "/v1/permissions/"])
def test_a_trailing_slash_is_404_in_the_envelope_never_a_redirect_built_from_host(
    client, path: str
) -> None:
    response = client.request(
        "POST" if "webhooks" in path else "GET",
        path,
        content=VALID,
        headers={**signed_headers(VALID), "Host": "evil.example"},
        follow_redirects=False,
    )
    assert response.status_code == 404 and "location" not in response.headers
    assert response.json()["error"]["code"] == 1005


def test_an_oversized_body_is_refused(client, engine) -> None:
    big = make_event(
        "customer.updated", {"id": "cus_big", "object": "customer", "pad": "x" * (1024 * 1024)}
    )
    response = post_webhook(client, big)
    assert_rejected(response, 413, "larger than", engine)


def test_a_storage_failure_answers_5xx_so_that_stripe_retries(client, engine, monkeypatch) -> None:
    def broken_save(*_: Any, **__: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(engine.log, "save", broken_save)
    response = post_webhook(client, VALID)
    assert_rejected(response, 503, "retry", engine)
    assert "disk on fire" not in response.text
