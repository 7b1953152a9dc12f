"""Import: Stripe's current objects become observations, read by the rules as snapshots at the
instant they were read. Against the recorded Stripe API; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from adapters.stripe.listing import Listed, StripeAccessError, StripeLister
from adapters.usecases.importing import IMPORT, Importer, Observer
from domain.aggregates import Buyer, buyer_id
from domain.catalogue import Catalogue
from domain.outcomes import Entitlement
from tests.conftest import ingest, settle
from tests.lifecycles import CATALOGUE, DAY, T0, event, invoice, subscription
from tests.recorded_stripe import KEY, RecordedStripe, running

NOW = T0 + 5 * DAY


@pytest.fixture
def stripe_api() -> Iterator[RecordedStripe]:
    yield from running()


@pytest.fixture
def catalogued(engine: Any) -> Any:
    engine.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
    return engine


def importer(engine: Any, api: RecordedStripe) -> Importer:
    run = Importer(engine.log, StripeLister(KEY, api.url, max_per_second=1000), "demo")
    run.observer.clock = lambda: float(NOW)
    return run


def codes(engine: Any, customid: str, at: int = NOW) -> dict[str, int]:
    settle(engine)
    found = engine.entitlements.permissions("demo", customid, at)
    return {p.permission_id: int(p.entitlement) for p in found}


def test_import_gives_existing_subscribers_their_codes(catalogued, stripe_api):
    stripe_api.add_object("/v1/customers", {"id": "cus_a", "object": "customer",
                                            "metadata": {"customid": "user_cus_a"}})  # fmt: skip
    stripe_api.add_object("/v1/subscriptions", subscription(0, "cus_a", "active", "prod_pro", T0))
    stripe_api.add_object(
        "/v1/subscriptions",
        subscription(0, "cus_b", "active", "prod_basic", T0, cancel_at_period_end=True),
    )
    stripe_api.add_object("/v1/subscriptions", subscription(0, "cus_c", "canceled", "prod_pro", T0))
    stripe_api.add_object("/v1/invoices", invoice(0, "cus_a", "sub_cus_a_0", "prod_pro", T0, True))
    summary = importer(catalogued, stripe_api).run()
    assert (summary.seen, summary.recorded) == (5, 5)
    assert codes(catalogued, "user_cus_a") == {"access": 5, "pro": 5}
    assert codes(catalogued, "user_cus_b") == {"access": 4, "pro": -9}
    assert codes(catalogued, "user_cus_c")["pro"] < 0


def test_importing_twice_records_nothing_new_where_nothing_changed(catalogued, stripe_api):
    stripe_api.add_object("/v1/subscriptions", subscription(0, "cus_a", "active", "prod_pro", T0))
    first = importer(catalogued, stripe_api).run()
    second = importer(catalogued, stripe_api).run()
    assert (first.recorded, second.recorded, second.unchanged) == (1, 0, 1)
    stripe_api.objects["/v1/subscriptions"][0]["status"] = "past_due"
    third = importer(catalogued, stripe_api).run()
    assert third.recorded == 1


def test_an_observation_is_on_the_buyers_history_with_where_it_came_from(catalogued, stripe_api):
    sub = subscription(0, "cus_a", "active", "prod_pro", T0)
    stripe_api.add_object("/v1/subscriptions", sub)
    importer(catalogued, stripe_api).run()
    (observed,) = [
        e for e in catalogued.log.history(buyer_id("demo", "cus_a"))
        if isinstance(e, Buyer.StripeObjectObserved)
    ]  # fmt: skip
    assert (observed.object_type, observed.object_id) == ("subscription", sub["id"])
    assert (observed.command, observed.observed_at) == (IMPORT, float(NOW))
    assert json.loads(observed.raw) == sub


@pytest.mark.parametrize("webhook_first", [True, False])
def test_an_observation_never_overwrites_a_newer_snapshot(catalogued, webhook_first):
    active = subscription(0, "cus_a", "active", "prod_pro", T0)
    canceled = subscription(0, "cus_a", "canceled", "prod_pro", T0)
    newer = event("evt_canceled", "customer.subscription.deleted", NOW + 60, canceled)
    observer = Observer(catalogued.log, "demo", IMPORT, clock=lambda: float(NOW))
    record = [
        lambda: ingest(catalogued, [newer]),
        lambda: observer.observe(Listed(active, json.dumps(active))),
    ]
    for step in record if webhook_first else reversed(record):
        step()
    assert codes(catalogued, "user_cus_a", NOW + 120)["pro"] == Entitlement.EXPIRED_VOLUNTARY


@pytest.mark.parametrize("webhook_first", [True, False])
def test_a_newer_observation_settles_an_older_webhook(catalogued, webhook_first):
    past_due = subscription(0, "cus_a", "past_due", "prod_pro", T0)
    active = subscription(0, "cus_a", "active", "prod_pro", T0)
    older = event("evt_past_due", "customer.subscription.updated", NOW - 60, past_due)
    observer = Observer(catalogued.log, "demo", IMPORT, clock=lambda: float(NOW))
    record = [
        lambda: ingest(catalogued, [older]),
        lambda: observer.observe(Listed(active, json.dumps(active))),
    ]
    for step in record if webhook_first else reversed(record):
        step()
    assert codes(catalogued, "user_cus_a")["pro"] == Entitlement.AUTO_RENEW_ON


def test_a_payment_mode_checkout_with_its_line_items_grants_its_product(catalogued, stripe_api):
    session = {
        "id": "cs_test_1", "object": "checkout.session", "mode": "payment", "status": "complete",
        "payment_status": "paid", "customer": None, "client_reference_id": "user_guest",
        "payment_intent": "pi_guest", "metadata": {}, "amount_total": 900, "created": T0,
        "line_items": {"object": "list", "has_more": False, "data": [
            {"id": "li_1", "object": "item", "quantity": 1,
             "price": {"id": "price_pass", "product": "prod_pass"}}]},
    }  # fmt: skip
    stripe_api.add_object("/v1/checkout/sessions", session)
    subscribing = {**session, "id": "cs_sub", "mode": "subscription"}
    stripe_api.add_object("/v1/checkout/sessions", subscribing)
    summary = importer(catalogued, stripe_api).run()
    assert (summary.recorded, summary.skipped) == (1, 1)
    assert codes(catalogued, "user_guest")["access"] == Entitlement.NON_RENEWING


def test_a_key_without_a_list_permission_names_it_and_records_nothing(catalogued, stripe_api):
    stripe_api.add_object("/v1/customers", {"id": "cus_a", "object": "customer"})
    stripe_api.forbidden.add("/v1/subscriptions")
    before = catalogued.log.recorder.max_notification_id()
    with pytest.raises(StripeAccessError, match="'Subscriptions: Read'"):
        importer(catalogued, stripe_api).run(
            [("/v1/subscriptions", {"status": "all"}), ("/v1/customers", {})]
        )
    assert catalogued.log.recorder.max_notification_id() == before
