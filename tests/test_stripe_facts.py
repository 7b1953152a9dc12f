"""Reading Stripe events as facts, whatever the API version (adapters/stripe/facts.py).

Payloads are real Stripe events (../shared/fixtures/stripe, see SOURCES.md there). Where a case
has no real capture, a copy of a real payload is edited in the test, and the test says how.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.stripe.facts import FACT_READERS, facts_from_event, line_items_from_stripe
from domain.facts import (
    ChargeRefunded,
    CheckoutCompleted,
    CreditNoteIssued,
    CustomerObserved,
    DisputeObserved,
    Fact,
    InvoiceObserved,
    InvoicePaymentObserved,
    LineItem,
    PaymentSucceeded,
    SubscriptionObserved,
    fact_from_dict,
    items_key,
    snapshot_attribute,
)
from projections.buyer_facts import fact_text
from tests.renderings import as_basil_invoice, as_basil_subscription

STRIPE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "stripe"
EVENT_FILES = sorted([*STRIPE.glob("events/*.json"), *STRIPE.glob("events-newer/*.json")])
OPENAPI_FILES = sorted(STRIPE.glob("objects/openapi_fixtures3/*.json"))

# What each acted-on event type states.
EXPECTED_KIND = {
    "checkout.session.completed": "checkout",
    "payment_intent.succeeded": "payment",
    "payment_intent.partially_funded": "payment",
    "invoice.paid": "invoice",
    "invoice.payment_succeeded": "invoice",
    "invoice.updated": "invoice",
    "invoice.payment_failed": "invoice",
    "invoice_payment.paid": "invoice_payment",
    "charge.succeeded": "payment",
    "charge.failed": "payment_failed",
    "charge.refunded": "refund",
    "credit_note.created": "credit_note",
    "customer.created": "customer",
    "customer.updated": "customer",
    "customer.deleted": "customer",
    **{f"customer.subscription.{action}": "subscription" for action in
       ("created", "updated", "deleted", "paused", "resumed", "trial_will_end")},
    **{f"charge.dispute.{action}": "dispute" for action in
       ("created", "updated", "closed", "funds_withdrawn", "funds_reinstated")},
}  # fmt: skip

# Acted-on fixtures that rightly state nothing.
NO_FACT = {"credit_note.created__sse__1.json": "a credit note without a refund moves no money"}


@functools.cache
def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def event(name: str) -> dict[str, Any]:
    """A fresh copy of a fixture event (tests may edit it)."""
    folder = "events-newer" if name[:4].isdigit() else "events"
    return copy.deepcopy(_load(STRIPE / folder / name))


def only_fact(payload: dict[str, Any]) -> Any:
    facts = facts_from_event(payload)
    assert len(facts) == 1, facts
    return facts[0]


# --- Every real payload -------------------------------------------------------------------------


def test_the_dispatch_table_covers_every_acted_on_type() -> None:
    assert set(FACT_READERS) == set(EXPECTED_KIND)


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda path: path.name)
def test_every_fixture_reads_as_facts_of_its_kind(path: Path) -> None:
    payload = copy.deepcopy(_load(path))
    facts = facts_from_event(payload)

    expected = EXPECTED_KIND.get(payload["type"])
    if expected is None or path.name in NO_FACT:
        assert facts == []
        return
    assert [fact.kind for fact in facts] == [expected]
    assert facts[0].event_id == payload["id"]
    assert facts[0].at == payload["created"]
    # Facts are plain JSON values: they survive the projection store's round trip.
    assert fact_from_dict(json.loads(json.dumps(facts[0].to_dict()))) == facts[0]


def test_unknown_types_and_non_events_state_nothing() -> None:
    assert facts_from_event(event("charge.captured__srm__1.json")) == []
    assert facts_from_event({"id": "evt_1", "type": "v2.core.event", "data": {}}) == []
    assert facts_from_event([]) == []  # type: ignore[arg-type]
    assert facts_from_event({"type": "customer.updated", "data": {"object": {"id": "cus_1"}}}) == []


def test_an_event_without_created_is_stamped_zero() -> None:
    payload = event("customer.updated__sse__1.json")
    del payload["created"]
    assert only_fact(payload).at == 0


# --- Subscriptions, by era ----------------------------------------------------------------------


def test_a_2013_subscription_has_its_plan_on_the_subscription_and_no_id() -> None:
    fact = only_fact(event("customer.subscription.created__srm_e19fdb9__1.json"))

    assert fact == SubscriptionObserved(
        event_id="evt_00000000000000",
        at=1326853478,
        # One subscription per customer in 2013: the customer names it, stably across plan changes.
        subscription_id="legacy:subscription:cus_00000000000000",
        customer_id="cus_00000000000000",
        status="trialing",
        items=(LineItem(None, "1_00000000000000", None, 1, 1371501377, 1371760577),),
        current_period_start=1371501377,
        current_period_end=1371760577,
        trial_end=1371760577,
        creation=True,  # a customer.subscription.created event
    )


def test_a_2013_plan_change_keeps_the_same_subscription() -> None:
    created = only_fact(event("customer.subscription.created__srm_e19fdb9__1.json"))
    updated = only_fact(event("customer.subscription.updated__srm_e19fdb9__1.json"))
    assert updated.subscription_id == created.subscription_id


def test_a_2020_subscription_with_two_items() -> None:
    fact = only_fact(event("customer.subscription.created__sse__1.json"))

    assert fact.subscription_id == "sub_JdIzvfy6o5GZRd"
    assert fact.customer_id == "cus_IhGfebO16cMIGN"
    assert fact.status == "active"
    assert [item.item_id for item in fact.items] == ["si_JdIzi4Tn5jV9PD", "si_JdIzi4Tn5jVaaa"]
    assert {(item.product_id, item.price_id) for item in fact.items} == {
        ("prod_Ip4vqwv3EJ7Mi0", "price_1IDQm5JDPojXS6LNM31hxKzp")
    }
    # Before basil every item shares the subscription's period.
    assert {(item.period_start, item.period_end) for item in fact.items} == {
        (1623148918, 1625740918)
    }
    assert (fact.current_period_start, fact.current_period_end) == (1623148918, 1625740918)


def test_a_2018_multi_item_subscription_reads_products_and_quantities_from_item_plans() -> None:
    fact = only_fact(event("customer.subscription.created__srm_c9af9d3__1.json"))
    assert [(item.product_id, item.price_id, item.quantity) for item in fact.items] == [
        ("pr_00000000000000", "fkx0AFo_00000000000000", 1),
        ("pr_00000000000001", "fkx0AFo_00000000000001", 5),
    ]


def test_a_basil_subscription_takes_its_period_from_its_items() -> None:
    payload = event("2025-04-30.basil__customer.subscription.updated__godgpt__1.json")
    assert "current_period_end" not in payload["data"]["object"]

    fact = only_fact(payload)

    assert fact.subscription_id == "sub_1RREM3QbIBhnP6iTBf2famU7"
    assert fact.items == (
        LineItem(
            product_id="prod_SJZt7ElIbOQ4Zw",
            price_id="price_1ROwjjQbIBhnP6iT5sfn6LmX",
            item_id="si_SLwEPWp7gPaBTx",
            quantity=1,
            period_start=1747840488,
            period_end=1747926888,
        ),
    )
    assert (fact.current_period_start, fact.current_period_end) == (1747840488, 1747926888)
    assert fact.cancel_at_period_end is True
    assert fact.cancel_at == 1747926888
    assert fact.cancellation_reason == "cancellation_requested"


def test_the_latest_item_end_is_the_period_end_when_items_differ() -> None:
    payload = event("2025-04-30.basil__customer.subscription.updated__godgpt__1.json")
    items = payload["data"]["object"]["items"]["data"]
    longer = {**copy.deepcopy(items[0]), "id": "si_2", "current_period_end": 1750000000}
    items.append(longer)
    assert only_fact(payload).current_period_end == 1750000000


def test_deleted_paused_and_linked_subscriptions() -> None:
    deleted = only_fact(event("customer.subscription.deleted__sse__1.json"))
    assert (deleted.deleted, deleted.status) == (True, "canceled")

    payload = event("customer.subscription.updated__sse__1.json")
    subscription = payload["data"]["object"]
    subscription["pause_collection"] = {"behavior": "void", "resumes_at": None}
    subscription["metadata"] = {"customid": "user_42"}
    fact = only_fact(payload)
    assert (fact.paused, fact.deleted, fact.customid) == (True, False, "user_42")


@pytest.mark.parametrize(
    "name",
    ["customer.subscription.updated__srm__1.json", "customer.subscription.created__sse__1.json"],
)
def test_a_subscription_reads_the_same_in_the_2020_and_basil_shapes(name: str) -> None:
    old = event(name)
    basil = as_basil_subscription(old)

    assert only_fact(basil) == replace(only_fact(old), event_id=basil["id"])


# --- Which of two snapshots of one second came first ---------------------------------------------


def test_a_creation_is_marked_and_an_update_says_what_it_changed() -> None:
    created = only_fact(event("2023-10-16__customer.subscription.created__alimehndi__1.json"))
    updated = only_fact(event("2023-10-16__customer.subscription.updated__alimehndi__1.json"))
    assert (created.creation, created.previous) == (True, ())
    # The real update's previous_attributes: {"default_payment_method": null, "status":
    # "incomplete"}; only what describes a snapshot's state is kept.
    assert (updated.creation, updated.previous) == (False, (("status", "incomplete"),))
    assert snapshot_attribute(created, "status") == "incomplete"


def test_a_basil_update_names_the_cancellation_it_undid_or_set() -> None:
    fact = only_fact(event("2025-04-30.basil__customer.subscription.updated__godgpt__1.json"))
    assert fact.previous == (
        ("cancel_at", None),
        ("cancel_at_period_end", False),
        ("canceled_at", None),
    )


def test_a_plan_change_names_the_previous_items() -> None:
    # 2018 shape: items list, previous_attributes.plan (the old plan object).
    fact = only_fact(event("customer.subscription.updated__srm_c9af9d3__1.json"))
    assert dict(fact.previous) == {"items": "OLD_PLAN_ID/pr_00000000000002"}


def test_previous_items_at_basil_carry_the_previous_item_periods() -> None:
    # Edited copy of the real basil update: the item's period moved on (a renewal), which
    # basil reports as the whole previous items list (changelog: previous_attributes now
    # contain the item-level period change).
    payload = event("2025-04-30.basil__customer.subscription.updated__godgpt__1.json")
    before = copy.deepcopy(payload["data"]["object"]["items"])
    for item in before["data"]:
        item.update(current_period_start=1747754088, current_period_end=1747840488)
    payload["data"]["previous_attributes"] = {"items": before}
    fact = only_fact(payload)
    assert dict(fact.previous) == {
        "items": items_key(fact.items),
        "current_period_start": 1747754088,
        "current_period_end": 1747840488,
    }


def test_damaged_previous_attributes_are_left_out() -> None:
    payload = event("2023-10-16__customer.subscription.updated__alimehndi__1.json")
    payload["data"]["previous_attributes"] = {"status": 3, "cancel_at": "soon", "ended_at": None}
    assert only_fact(payload).previous == (("ended_at", None),)
    payload["data"]["previous_attributes"] = "junk"
    assert only_fact(payload).previous == ()


# --- Invoices -----------------------------------------------------------------------------------


def test_a_basil_invoice_names_its_subscription_through_its_parent() -> None:
    payload = event("2025-04-30.basil__invoice.paid__godgpt__1.json")
    invoice = payload["data"]["object"]
    assert "paid" not in invoice and "subscription" not in invoice

    fact = only_fact(payload)

    assert fact == InvoiceObserved(
        event_id="evt_1RQW3BQbIBhnP6iTm0pKJDvZ",
        at=1747670185,
        invoice_id="in_1RQW3AQbIBhnP6iTg9P98m78",
        customer_id="cus_SKFohsRQelpJ8A",
        subscription_id="sub_1RQW3AQbIBhnP6iTIpjes7Uv",
        status="paid",
        paid=True,
        payment_failed=False,
        lines=(
            LineItem(
                product_id="prod_SJZt7ElIbOQ4Zw",
                price_id="price_1ROwjjQbIBhnP6iT5sfn6LmX",
                item_id="si_SLCS5VCXB5bEsa",
                quantity=1,
                period_start=1747670183,
                period_end=1747756583,
            ),
        ),
        # The service period of the subscription line, not the invoice's creation instant.
        period_start=1747670183,
        period_end=1747756583,
        billing_reason="subscription_create",
        amount_paid=100,
    )


def test_a_basil_invoice_is_linked_by_its_subscription_metadata() -> None:
    payload = event("2025-04-30.basil__invoice.paid__godgpt__1.json")
    payload["data"]["object"]["parent"]["subscription_details"]["metadata"]["customid"] = "u_7"
    assert only_fact(payload).customid == "u_7"


def test_a_2014_invoice_names_its_subscription_and_period_by_its_subscription_line() -> None:
    fact = only_fact(event("invoice.payment_succeeded__srm_9bf74f5__1.json"))
    assert fact.paid is True and fact.status is None  # `paid` boolean, no status yet
    assert fact.subscription_id == "su_00000000000000"
    assert fact.lines == (LineItem(None, "platinum", None, 1, 1383759053, 1386351053),)
    # Proration lines (no plan, no subscription) neither become lines nor widen the period.
    assert (fact.period_start, fact.period_end) == (1383759053, 1386351053)
    assert fact.charge_id == "ch_00000000000000"


def test_a_failed_invoice_payment() -> None:
    fact = only_fact(event("invoice.payment_failed__srm__1.json"))
    assert (fact.paid, fact.payment_failed, fact.status) == (False, True, "open")


def test_an_invoice_reads_the_same_in_the_2020_and_basil_shapes() -> None:
    old = event("invoice.paid__sse__1.json")
    assert only_fact(as_basil_invoice(old)) == only_fact(old)


# --- InvoicePayments (basil and later) ----------------------------------------------------------

PAY_RAILS_INVOICE_PAYMENT = STRIPE / "objects" / "pay-rails" / "event_data__invoice.updated.json"


def invoice_payment_event(**changes: Any) -> dict[str, Any]:
    """pay-rails' real `event.data` of an invoice_payment (2026-02; its file is misnamed
    invoice.updated), in an envelope of ours: `invoice_payment.paid`, at clover."""
    data = json.loads(PAY_RAILS_INVOICE_PAYMENT.read_text())
    data["object"].update(changes)
    return {
        "id": "evt_inpay_1",
        "object": "event",
        "api_version": "2025-09-30.clover",
        "created": 1771896040,
        "type": "invoice_payment.paid",
        "data": data,
    }


def test_an_invoice_payment_names_its_invoice_subscription_and_payment_intent() -> None:
    assert only_fact(invoice_payment_event()) == InvoicePaymentObserved(
        event_id="evt_inpay_1",
        at=1771896040,
        invoice_payment_id="inpay_1T4AIlGWAy8DppqhYcK0hqe3",
        invoice_id="in_1T4AIkGWAy8DppqhJAdbjaWb",
        subscription_id="sub_1234",
        payment_intent_id="pi_3T4AIlGWAy8Dppqh3Vsl9Pya",
        charge_id=None,
        amount_paid=2000,
        paid=True,
    )


def test_an_invoice_payment_by_charge_and_the_newer_top_level_shape() -> None:
    by_charge = invoice_payment_event(payment={"type": "charge", "charge": "ch_1"})
    assert (only_fact(by_charge).charge_id, only_fact(by_charge).payment_intent_id) == (
        "ch_1",
        None,
    )
    # Stripe's API reference for 2025-11-17.preview: `charge` / `payment_intent` top level.
    top = invoice_payment_event(payment_intent="pi_9", charge=None)
    del top["data"]["object"]["payment"]
    assert only_fact(top).payment_intent_id == "pi_9"


def test_an_invoice_payment_claims_the_subscriptions_customid() -> None:
    payload = invoice_payment_event()
    payload["data"]["object"]["parent"]["subscription_details"]["metadata"] = {"customid": "u"}
    assert only_fact(payload).customid == "u"


@pytest.mark.parametrize("path", OPENAPI_FILES[-3:], ids=lambda path: path.stem.split("__")[1])
def test_stripe_example_invoice_payments_read(path: Path) -> None:
    """Stripe's example InvoicePayment (basil 2025-03-31, 2025-08-27, clover): its payment
    names only a type, so the fact links the invoice to no payment."""
    example = _load(path)["resources"]["invoice_payment"]
    fact = only_fact(_wrap("invoice_payment.paid", example))
    assert (fact.invoice_id, fact.payment_intent_id, fact.charge_id) == ("invoice", None, None)


# --- Payments, refunds, disputes ----------------------------------------------------------------


def test_a_2022_11_15_payment_intent_names_its_charge_by_latest_charge() -> None:
    payload = event("payment_intent.succeeded__lago__2.json")
    assert "charges" not in payload["data"]["object"]

    assert only_fact(payload) == PaymentSucceeded(
        event_id="evt_3R3dvoQ8iJWBZFaM0Wh4E44o",
        at=1742218937,
        payment_intent_id="pi_3R3dvoQ8iJWBZFaM0uu1G1rx",
        charge_id="ch_3R3dvoQ8iJWBZFaM0NhAbztB",
        customer_id="cus_Rw5Qso78STEap3",
        amount=3897,
    )


def test_the_same_payment_reads_the_same_at_2020_08_27_2022_11_15_and_acacia() -> None:
    names = [f"payment_intent.succeeded__lago__{n}.json" for n in (1, 2, 3)]
    assert len({only_fact(event(name)) for name in names}) == 1


def test_a_2018_payment_intent_names_its_charge_in_its_charges_list() -> None:
    payload = event("payment_intent.succeeded__srm_68264c6__1.json")
    assert "latest_charge" not in payload["data"]["object"]
    assert only_fact(payload).charge_id == "ch_00000000000000"


def test_one_time_purchase_hints_come_from_payment_metadata() -> None:
    payload = event("payment_intent.succeeded__lago__4.json")
    payload["data"]["object"]["metadata"] = {
        "sku": "pass_30d",
        "product": "prod_P",
        "customid": "u",
    }
    fact = only_fact(payload)
    assert (fact.sku_id, fact.product_id, fact.customid) == ("pass_30d", "prod_P", "u")


def test_a_partially_funded_payment_intent_is_marked_so() -> None:
    assert only_fact(event("payment_intent.partially_funded__sse__1.json")).partially_funded


def test_a_full_refund() -> None:
    assert only_fact(event("charge.refunded__sse__1.json")) == ChargeRefunded(
        event_id="evt_3KtQThJDPojXS6LN0E06aNxq",
        at=1619701111,
        charge_id="ch_3Kl36gJDPojXS6LN0DCM4A8l",
        payment_intent_id="pi_3Kl36gJDPojXS6LN02fQVtKR",
        customer_id="cus_J7Mkgr8mvbl1eK",
        amount=2500,
        amount_refunded=2500,
        full=True,
        invoice_id="in_1KJdKkJDPojXS6LNSwSWkZSN",
    )


def test_a_partial_refund_without_a_refunds_list() -> None:
    # Edited copy of the full refund: 1000 of 2500 refunded, and no `refunds` (2022-11-15+).
    payload = event("charge.refunded__sse__1.json")
    charge = payload["data"]["object"]
    charge.update(amount_refunded=1000, refunded=False)
    charge.pop("refunds", None)

    fact = only_fact(payload)

    assert (fact.amount, fact.amount_refunded, fact.full) == (2500, 1000, False)


def test_a_2015_refund_is_full() -> None:
    fact = only_fact(event("charge.refunded__srm_77fbe56__1.json"))
    assert (fact.amount_refunded, fact.full) == (1000, True)


def test_a_credit_note_gives_money_back_only_with_a_refund_or_after_payment() -> None:
    payload = event("credit_note.created__sse__1.json")
    assert payload["data"]["object"]["type"] == "pre_payment"
    assert facts_from_event(payload) == []  # it only lowered what an unpaid invoice asked

    # Edited copy: the credit note refunded its amount (1099) to the card.
    note = payload["data"]["object"]
    note["refund"] = "re_1"
    assert only_fact(payload) == CreditNoteIssued(
        event_id="evt_1KJrLuJDPojXS6LNKLCh0CEr",
        at=1642649422,
        credit_note_id="cn_1MxvRqLkdIwHu7ixY0xbUcxk",
        invoice_id="in_1MxvRkLkdIwHu7ixABNtI99m",  # an id: the amount paid is the invoice's
        customer_id="cus_NjLgPhUokHubJC",
        amount=1099,
    )

    note["invoice"] = {"id": note["invoice"], "object": "invoice", "amount_paid": 1099}
    note["refund"] = {"id": "re_1", "charge": "ch_1", "payment_intent": {"id": "pi_1"}}
    fact = only_fact(payload)
    assert (fact.invoice_amount_paid, fact.charge_id, fact.payment_intent_id) == (
        1099,
        "ch_1",
        "pi_1",
    )

    # Edited copy: no refund, but issued after the invoice was paid (credited to the balance).
    note.update(refund=None, type="post_payment")
    assert only_fact(payload).amount == 1099


@pytest.mark.parametrize("path", OPENAPI_FILES, ids=lambda path: path.stem.split("__")[1])
def test_stripe_example_credit_notes_read_at_every_version(path: Path) -> None:
    """Stripe's example credit note: `refund` (null) before basil, `refunds[].refund` after."""
    note = _load(path)["resources"]["credit_note"]
    facts = facts_from_event(_wrap("credit_note.created", note))
    gives_back = bool(note.get("refund")) or bool(note.get("refunds"))
    assert [f.kind for f in facts] == (["credit_note"] if gives_back else [])
    for fact in facts:
        assert (fact.invoice_id, fact.amount) == (note["invoice"], note["amount"])


def test_a_lost_dispute() -> None:
    assert only_fact(event("charge.dispute.closed__lago__1.json")) == DisputeObserved(
        event_id="evt_3OzgpDH4tiDZlIUa09cnGOsO",
        at=1711724294,
        dispute_id="dp_1OzgpEH4tiDZlIUaZ8iWQMsb",
        charge_id="ch_3OzgpDH4tiDZlIUa0M7QchGT",
        payment_intent_id="pi_3OzgpDH4tiDZlIUa0Ezzggtg",
        status="lost",
        lost=True,
    )
    assert only_fact(event("charge.dispute.closed__lago__2.json")).lost is False  # won


def test_a_dispute_with_an_expanded_charge_reads_the_same() -> None:
    payload = event("charge.dispute.closed__lago__1.json")
    dispute = payload["data"]["object"]
    intent = dispute.pop("payment_intent")
    dispute["charge"] = {"id": dispute["charge"], "object": "charge", "payment_intent": intent}
    assert only_fact(payload) == only_fact(event("charge.dispute.closed__lago__1.json"))


def test_an_old_dispute_without_id_is_named_by_its_charge() -> None:
    fact = only_fact(event("charge.dispute.closed__srm__1.json"))
    assert fact.dispute_id == "legacy:dispute:ch_00000000000000"


# --- Checkout and customers ---------------------------------------------------------------------


def _payment_checkout(**session: Any) -> dict[str, Any]:
    payload = event("checkout.session.completed__srm__1.json")
    payload["data"]["object"].update(session)
    return payload


def test_a_payment_mode_checkout_with_metadata() -> None:
    # Edited copy: the real session's metadata was empty.
    payload = _payment_checkout(
        metadata={"sku": "pass_30d", "customid": "user_42"}, client_reference_id="ref_9"
    )
    assert only_fact(payload) == CheckoutCompleted(
        event_id="evt_000000000000000000000000",
        at=1648319959,
        session_id="cs_test_0000000000000000000000000000000000000000000000000000000000",
        mode="payment",
        paid=True,
        customer_id="cus_00000000000000",
        payment_intent_id="pi_000000000000000000000000",
        client_reference_id="ref_9",
        customid="user_42",
        lines=None,  # unknown until its line items are fetched
        sku_id="pass_30d",
        amount_total=3000,
    )


def test_a_checkout_names_its_products_by_line_items_or_metadata() -> None:
    by_metadata = only_fact(_payment_checkout(metadata={"product": "prod_P"}))
    assert by_metadata.lines == (LineItem(product_id="prod_P"),)

    item = {"id": "li_1", "object": "item", "quantity": 2, "price": {"id": "pr_1", "product": "p"}}
    expanded = only_fact(_payment_checkout(line_items={"data": [item], "has_more": False}))
    assert expanded.lines == (LineItem(product_id="p", price_id="pr_1", quantity=2),)

    partial = only_fact(_payment_checkout(line_items={"data": [item], "has_more": True}))
    assert partial.lines is None  # an incomplete page must be fetched whole

    display = {"type": "sku", "quantity": 1, "sku": {"id": "sku_1", "product": "prod_S"}}
    old = only_fact(_payment_checkout(display_items=[display]))
    assert old.lines == (LineItem(product_id="prod_S", price_id="sku_1"),)


def test_an_unpaid_checkout_is_not_paid() -> None:
    assert only_fact(_payment_checkout(payment_status="unpaid")).paid is False
    setup = only_fact(event("checkout.session.completed__srm__3.json"))
    assert (setup.mode, setup.paid) == ("setup", True)  # no_payment_required


def test_line_items_from_the_api_become_line_items() -> None:
    for path in OPENAPI_FILES:
        item = _load(path)["resources"]["item"]  # a checkout line item, as the API lists it
        assert line_items_from_stripe([item]) == (
            LineItem(product_id=item["price"]["product"], price_id=item["price"]["id"]),
        )
    assert line_items_from_stripe([{"id": "li_1", "price": None}, "junk"]) == ()  # type: ignore[list-item]


def test_a_customer_linked_by_metadata() -> None:
    # Edited copy: none of the real customers carries our `customid`.
    payload = event("customer.updated__lago__1.json")
    payload["data"]["object"]["metadata"]["customid"] = "user_42"
    assert only_fact(payload) == CustomerObserved(
        event_id="evt_1RWGXCQ8iJWBZFaMVlV0UVdh",
        at=1749040510,
        customer_id="cus_SR8o2vcGRkVb6v",
        customid="user_42",
    )

    payload["type"] = "customer.deleted"
    assert only_fact(payload).deleted is True


def test_expanded_objects_read_like_their_ids() -> None:
    payload = event("customer.subscription.created__sse__1.json")
    subscription = payload["data"]["object"]
    subscription["customer"] = {"id": subscription["customer"], "object": "customer"}
    for item in subscription["items"]["data"]:
        item["price"]["product"] = {"id": item["price"]["product"], "object": "product"}
    assert only_fact(payload) == only_fact(event("customer.subscription.created__sse__1.json"))


# --- Stripe's example objects at every API version ----------------------------------------------

RESOURCE_EVENTS = {
    "subscription": "customer.subscription.updated",
    "invoice": "invoice.paid",
    "payment_intent": "payment_intent.succeeded",
    "charge": "charge.refunded",
    "dispute": "charge.dispute.closed",
    "checkout.session": "checkout.session.completed",
    "customer": "customer.updated",
}


def _wrap(event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"id": "evt_1", "created": 1, "type": event_type, "data": {"object": obj}}


@pytest.mark.parametrize("path", OPENAPI_FILES, ids=lambda path: path.stem.split("__")[1])
def test_stripe_example_objects_of_every_version_read(path: Path) -> None:
    resources = _load(path)["resources"]
    for resource, event_type in RESOURCE_EVENTS.items():
        fact = only_fact(_wrap(event_type, resources[resource]))
        assert fact.kind == EXPECTED_KIND[event_type]

    subscription = resources["subscription"]
    item_ends = [item.get("current_period_end") for item in subscription["items"]["data"]]
    expected_end = subscription.get("current_period_end") or max(filter(None, item_ends))
    fact = only_fact(_wrap("customer.subscription.updated", subscription))
    assert fact.current_period_end == expected_end


# --- Robustness ---------------------------------------------------------------------------------

Path_ = tuple[str | int, ...]
DROP = object()
REPLACEMENTS = st.sampled_from([DROP, None, "x", "", [], {}, 0, -1, True, 1.5, ["x", None]])


@functools.cache
def _paths(path: Path) -> list[Path_]:
    """Every key and list index in a payload, so mutations can hit any depth."""
    found: list[Path_] = []

    def walk(value: Any, prefix: Path_) -> None:
        children = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in children:
            found.append((*prefix, key))
            if isinstance(child, dict | list):
                walk(child, (*prefix, key))

    walk(_load(path), ())
    return found


def _mutate(payload: Any, where: Path_, value: Any) -> None:
    parent = payload
    for key in where[:-1]:
        if not isinstance(parent, dict | list):
            return
        try:
            parent = parent[key]
        except (KeyError, IndexError, TypeError):
            return  # an earlier mutation removed or replaced the way there
    last = where[-1]
    present = (isinstance(parent, dict) and last in parent) or (
        isinstance(parent, list) and isinstance(last, int) and last < len(parent)
    )
    if not present:
        return
    if value is DROP:
        del parent[last]
    else:
        parent[last] = value


@st.composite
def mutated_events(draw: st.DrawFn) -> dict[str, Any]:
    path = draw(st.sampled_from(EVENT_FILES))
    payload = copy.deepcopy(_load(path))
    paths = _paths(path)
    for _ in range(draw(st.integers(1, 8))):
        _mutate(payload, paths[draw(st.integers(0, len(paths) - 1))], draw(REPLACEMENTS))
    return payload


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_events())
def test_damaged_payloads_never_raise(payload: dict[str, Any]) -> None:
    facts = facts_from_event(payload)

    assert all(isinstance(fact, Fact) for fact in facts)
    for fact in facts:
        assert isinstance(fact.event_id, str) and fact.event_id
        assert isinstance(fact.at, int)
        json.dumps(fact.to_dict())  # still plain JSON values


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(FACT_READERS)),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda children: st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["id", "items", "data", "plan", "price", "product", "parent", "lines", "period",
                 "pricing", "price_details", "subscription_details", "metadata", "customer",
                 "charge", "refunds", "refund", "invoice", "line_items", "display_items", "type"]
            ),
            children,
            max_size=5,
        ),
        max_leaves=20,
    ),
)  # fmt: skip
def test_arbitrary_objects_never_raise(event_type: str, obj: Any) -> None:
    facts_from_event(_wrap(event_type, obj))


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda path: path.name)
def test_a_facts_dict_is_what_dataclasses_asdict_gives(path: Path) -> None:
    # `to_dict` is hand-written for speed: it must stay byte-for-byte the standard conversion,
    # or a rebuild would store different text than the live projection did.
    for fact in facts_from_event(json.loads(path.read_text())):
        reference = {"kind": fact.kind, **dataclasses.asdict(fact)}
        assert json.dumps(fact.to_dict()) == json.dumps(reference)


@pytest.mark.parametrize("path", EVENT_FILES, ids=lambda path: path.name)
def test_a_stored_fact_is_the_json_of_its_dict(path: Path) -> None:
    # Facts are memoised by their stored text and compared across runs: `fact_text` (orjson on
    # the dataclass itself, for speed) must write exactly the text of `to_dict`, also for a fact
    # rebuilt from a dict whose keys came in another order.
    for fact in facts_from_event(json.loads(path.read_text())):
        text = fact_text(fact)
        assert text == orjson.dumps(fact.to_dict()).decode()
        shuffled = dict(reversed(json.loads(text).items()))
        assert fact_text(fact_from_dict(shuffled)) == text
        assert fact_from_dict(orjson.loads(text)) == fact
