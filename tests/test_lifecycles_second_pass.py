"""Lifecycles written as a new user would write them, at API versions from 2020-08-27 to clover,
through the whole engine (webhook -> event log -> projection -> query) on SQLite and PostgreSQL,
delivered out of order with duplicates; and, from the same payloads' facts, the rules in every
order.

Payloads are real (../shared/fixtures/stripe) where one exists. Where none does, a real payload
of the nearest kind is edited, or Stripe's own example object of that API version
(objects/openapi_fixtures3) is used; each builder says which, and what was changed.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import random
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from adapters.stripe.facts import facts_from_event
from domain.catalogue import Catalogue
from domain.policy import AppPolicy
from domain.rules import derive
from tests.conftest import FIXTURES, settle
from tests.test_entitlements_api import (
    AUTH,
    CATALOGUE,
    connect,
    deliver,
    permissions,
    real,
    setup_catalogue,
)

Event = dict[str, Any]
BASIL, CLOVER = "2025-04-30.basil", "2025-09-30.clover"
EXAMPLES = {  # Stripe's example objects, per API version
    BASIL: "fixtures3__2025-03-31.basil__openapi-v1642.json",
    CLOVER: "fixtures3__2025-09-30.clover__openapi-v2028.json",
}

SECOND_PASS_CATALOGUE = copy.deepcopy(CATALOGUE)
SECOND_PASS_CATALOGUE["skus"] += [
    {"skuId": "srm_base", "productId": "pr_00000000000000"},
    {"skuId": "srm_addon", "productId": "pr_00000000000001"},
]
SECOND_PASS_CATALOGUE["permissions"][0]["skuIds"].append("srm_base")
SECOND_PASS_CATALOGUE["permissions"].append({"permissionId": "addon", "skuIds": ["srm_addon"]})


@functools.cache
def _example(version: str, resource: str) -> str:
    path = FIXTURES / "objects" / "openapi_fixtures3" / EXAMPLES[version]
    return json.dumps(json.loads(path.read_text())["resources"][resource])


def example(version: str, resource: str) -> dict[str, Any]:
    return json.loads(_example(version, resource))


def envelope(event_id: str, event_type: str, created: int, obj: dict, version: str) -> Event:
    return {
        "id": event_id,
        "object": "event",
        "api_version": version,
        "created": created,
        "type": event_type,
        "livemode": False,
        "data": {"object": obj},
    }


def at_version(event: Event, version: str) -> Event:
    """A basil payload as an endpoint at `version` renders it: clover moved none of the fields
    read here (its breaking changes are about billing mode and prorations)."""
    return {**event, "api_version": version}


def code_of(client: TestClient, customid: str, at: int, permission: str = "premium") -> int:
    return permissions(client, customid, at=at)[permission]["entitlement"]


def explained(client: TestClient, customid: str, at: int, permission: str = "premium") -> dict:
    return permissions(client, customid, at=at, explain="1")[permission]


def shuffled_with_duplicates(events: list[Event]) -> list[Event]:
    """The events newest first, then again (redeliveries), oldest first."""
    return [*reversed(events), *events]


def every_order(events: list[Event], limit: int = 120) -> Iterator[list[Event]]:
    """Every permutation of `events` (a fixed sample of `limit` when there are more), each with
    its first event delivered twice."""
    if math.factorial(len(events)) <= limit:
        orders: Iterator[tuple[Event, ...]] = itertools.permutations(events)
    else:
        shuffler = random.Random(len(events))
        orders = (tuple(shuffler.sample(events, len(events))) for _ in range(limit))
    for order in orders:
        yield [*order, order[0]]


def codes_in_every_order(
    events: list[Event],
    at: int,
    permission: str = "premium",
    policy: AppPolicy | None = None,
    limit: int = 120,
) -> set[int]:
    """The permission's code derived from the payloads' facts, for every delivery order."""
    catalogue = Catalogue.from_json(SECOND_PASS_CATALOGUE)
    found = set()
    for order in every_order(events, limit):
        facts = [fact for event in order for fact in facts_from_event(copy.deepcopy(event))]
        derived = derive(facts, catalogue, policy or AppPolicy(), at).permissions
        found |= {p.entitlement for p in derived if p.permission_id == permission}
    return found


@pytest.fixture
def catalogued(client: TestClient) -> TestClient:
    setup_catalogue(client, SECOND_PASS_CATALOGUE)
    return client


# --- 1. From basil on, a refund, a credit note or a lost dispute still revokes -----------------

GOD = "cus_SKFohsRQelpJ8A"  # real basil invoice (godgpt): a GodGPT subscription paid for a day
GOD_INVOICE = "2025-04-30.basil__invoice.paid__godgpt__1.json"
GOD_PAID_AT = 1747670185
GOD_PI, GOD_CHARGE = "pi_3RQW3BQbIBhnP6iT0god0001", "ch_3RQW3BQbIBhnP6iT0god0001"


def god_invoice(version: str) -> Event:
    """Real: names no charge or payment intent (basil)."""
    return at_version(real(GOD_INVOICE), version)


def god_invoice_payment(version: str, invoice: Event | None = None) -> Event:
    """pay-rails' real invoice_payment (2026-02), edited to pay the godgpt invoice by our
    payment intent, in an `invoice_payment.paid` envelope."""
    invoice = invoice or god_invoice(version)
    path = FIXTURES / "objects" / "pay-rails" / "event_data__invoice.updated.json"
    payment = json.loads(path.read_text())["object"]
    paid = invoice["data"]["object"]
    subscription = (paid.get("parent") or {}).get("subscription_details") or {}
    payment.update(
        id=f"inpay_{paid['id']}",
        invoice=paid["id"],
        amount_paid=paid["amount_paid"],
        amount_requested=paid["amount_paid"],
        payment={"type": "payment_intent", "payment_intent": GOD_PI},
        parent={"type": "subscription_details", **({"subscription_details": subscription})}
        if subscription
        else None,
    )
    return envelope(f"evt_inpay_{paid['id']}", "invoice_payment.paid", invoice["created"],
                    payment, version)  # fmt: skip


def god_payment(version: str) -> Event:
    """Real basil payment_intent.succeeded (lago), edited to be the godgpt customer's payment."""
    event = at_version(real("payment_intent.succeeded__lago__4.json"), version)
    event["id"], event["created"] = "evt_god_pi", GOD_PAID_AT
    intent = event["data"]["object"]
    intent.update(id=GOD_PI, customer=GOD, latest_charge=GOD_CHARGE, amount=100, metadata={})
    return event


def god_refund(version: str, created: int = GOD_PAID_AT + 1800) -> Event:
    """Stripe's example Charge of that version, refunded in full: the godgpt customer's charge
    (basil: no `invoice` on a charge)."""
    charge = example(version, "charge")
    assert "invoice" not in charge
    charge.update(id=GOD_CHARGE, customer=GOD, payment_intent=GOD_PI, amount=100,
                  amount_captured=100, amount_refunded=100, refunded=True)  # fmt: skip
    return envelope("evt_god_refunded", "charge.refunded", created, charge, version)


def god_dispute(version: str, status: str = "lost") -> Event:
    """Real basil charge.dispute.closed (lago; warning_closed), edited: lost, on our charge."""
    event = at_version(real("charge.dispute.closed__lago__3.json"), version)
    event["created"] = GOD_PAID_AT + 1800
    event["data"]["object"].update(charge=GOD_CHARGE, payment_intent=GOD_PI, status=status)
    return event


def god_credit_note(version: str, amount: int) -> Event:
    """Stripe's example CreditNote of that version (its `refunds[].refund`), on the godgpt
    invoice, for `amount` of the 100 paid."""
    note = example(version, "credit_note")
    note.update(id=f"cn_god_{amount}", invoice=real(GOD_INVOICE)["data"]["object"]["id"],
                customer=GOD, amount=amount, total=amount)  # fmt: skip
    return envelope(f"evt_cn_{amount}", "credit_note.created", GOD_PAID_AT + 1800, note, version)


ASKED = GOD_PAID_AT + 3600  # within the day paid for


@pytest.mark.parametrize("version", [BASIL, CLOVER])
def test_a_refund_of_a_subscription_payment_revokes_from_basil_on(catalogued, engine, version):
    paid = [god_invoice(version), god_invoice_payment(version)]
    assert codes_in_every_order([*paid, god_refund(version)], ASKED) == {-8}
    assert codes_in_every_order([paid[0], god_refund(version)], ASKED) == {5}  # the link matters
    connect(catalogued, "god", GOD)
    deliver(catalogued, *shuffled_with_duplicates([*paid, god_refund(version)]))
    settle(engine)
    premium = explained(catalogued, "god", ASKED)
    assert (premium["entitlement"], premium["expireDate"]) == (-8, GOD_PAID_AT + 1800)
    assert premium["explain"]["rule"] == "refund.full"
    assert code_of(catalogued, "god", GOD_PAID_AT + 60) == 5  # before the refund


@pytest.mark.parametrize("version", [BASIL, CLOVER])
def test_a_lost_dispute_of_a_subscription_payment_revokes_from_basil_on(
    catalogued, engine, version
):
    # The dispute names no customer: it lands on the payment's history, with the InvoicePayment;
    # the customer's own payment_intent.succeeded names that payment.
    lifecycle = [god_invoice(version), god_invoice_payment(version), god_payment(version)]
    assert codes_in_every_order([*lifecycle, god_dispute(version)], ASKED) == {-8}
    assert codes_in_every_order([*lifecycle, god_dispute(version, "won")], ASKED) == {5}
    connect(catalogued, "god", GOD)
    deliver(catalogued, *shuffled_with_duplicates([*lifecycle, god_dispute(version)]))
    settle(engine)
    premium = explained(catalogued, "god", ASKED)
    assert (premium["entitlement"], premium["explain"]["rule"]) == (-8, "dispute.lost")


def test_a_lost_dispute_reaches_the_subscription_through_its_customid_alone(catalogued, engine):
    """Without the customer's payment events, the InvoicePayment still claims the customid of
    its subscription's metadata: the payment's history (the dispute's too) is then the
    customer's. (With neither, nothing the customer's history holds names the payment: see
    docs/design.md, "Rules that read more than the latest snapshot".)"""
    invoice_payment = god_invoice_payment(BASIL)
    details = invoice_payment["data"]["object"]["parent"]["subscription_details"]
    details["metadata"] = {**details["metadata"], "customid": "god"}
    lifecycle = [god_invoice(BASIL), invoice_payment, god_dispute(BASIL)]
    connect(catalogued, "god", GOD)
    deliver(catalogued, *shuffled_with_duplicates(lifecycle))
    settle(engine)
    assert code_of(catalogued, "god", ASKED) == -8


@pytest.mark.parametrize("version", [BASIL, CLOVER])
def test_a_credit_note_for_the_whole_amount_paid_revokes_from_basil_on(catalogued, engine, version):
    whole, part = god_credit_note(version, 100), god_credit_note(version, 40)
    assert codes_in_every_order([god_invoice(version), whole], ASKED) == {-8}
    assert codes_in_every_order([god_invoice(version), part], ASKED) == {5}
    any_refund = AppPolicy(refund_policy="any")
    assert codes_in_every_order([god_invoice(version), part], ASKED, policy=any_refund) == {-8}
    connect(catalogued, "god", GOD)
    deliver(catalogued, whole, god_invoice(version), whole)
    settle(engine)
    premium = explained(catalogued, "god", ASKED)
    assert (premium["entitlement"], premium["explain"]["rule"]) == (-8, "refund.full.credit_note")


# --- 2. Snapshots of one second are ordered by what happened, never by event id -----------------

GOD_SUB = "2025-04-30.basil__customer.subscription.updated__godgpt__1.json"  # sets a cancellation
GOD_SUB_AT = 1747841118
GOD_SUB_CUSTOMER = "cus_SLwBIqeMhsEIAn"


def cancellation_set() -> Event:
    """Real: the customer asked to cancel at the period end (previous_attributes: no cancel)."""
    return real(GOD_SUB)


def cancellation_undone(event_id: str, created: int = GOD_SUB_AT) -> Event:
    """Edited copy of the real update: the cancellation undone, in the same second."""
    event = real(GOD_SUB)
    event["id"] = event_id
    event["created"] = created
    sub = event["data"]["object"]
    before = {key: sub[key] for key in ("cancel_at", "cancel_at_period_end", "canceled_at")}
    sub.update(cancel_at=None, cancel_at_period_end=False, canceled_at=None)
    sub["cancellation_details"] = {"comment": None, "feedback": None, "reason": None}
    event["data"]["previous_attributes"] = before
    return event


def god_sub_created(created: int, cancel_set: bool) -> Event:
    """Edited copy of the real update as the subscription's creation (no previous_attributes)."""
    event = cancellation_set() if cancel_set else cancellation_undone("evt_x")
    event.update(id=f"evt_god_created_{created}", type="customer.subscription.created",
                 created=created)  # fmt: skip
    event["data"].pop("previous_attributes", None)
    return event


SUB_ASKED = GOD_SUB_AT + 60


@pytest.mark.parametrize("undo_id", ["evt_0000000000undo", "evt_zzzzzzzzzzundo"])
def test_a_cancellation_undone_in_the_same_second_stays_undone(catalogued, engine, undo_id):
    lifecycle = [
        god_sub_created(GOD_SUB_AT - 600, cancel_set=False),
        cancellation_set(),
        cancellation_undone(undo_id),
    ]
    assert codes_in_every_order(lifecycle, SUB_ASKED) == {5}  # whatever the event ids
    connect(catalogued, "god2", GOD_SUB_CUSTOMER)
    deliver(catalogued, *shuffled_with_duplicates(lifecycle))
    settle(engine)
    assert code_of(catalogued, "god2", SUB_ASKED) == 5


def test_a_creation_comes_before_an_update_of_the_same_second(catalogued, engine):
    # Created with a cancellation set, undone in the same second.
    lifecycle = [god_sub_created(GOD_SUB_AT, cancel_set=True), cancellation_undone("evt_0")]
    assert codes_in_every_order(lifecycle, SUB_ASKED) == {5}
    connect(catalogued, "god2", GOD_SUB_CUSTOMER)
    deliver(catalogued, *shuffled_with_duplicates(lifecycle))
    settle(engine)
    assert code_of(catalogued, "god2", SUB_ASKED) == 5


def test_a_deletion_comes_last_in_its_second(catalogued, engine):
    deleted = cancellation_undone("evt_0", GOD_SUB_AT)
    deleted.update(id="evt_0_deleted", type="customer.subscription.deleted")
    deleted["data"]["object"].update(status="canceled", ended_at=GOD_SUB_AT)
    deleted["data"].pop("previous_attributes")
    lifecycle = [cancellation_set(), cancellation_undone("evt_z"), deleted]
    assert codes_in_every_order(lifecycle, SUB_ASKED) == {-5}
    connect(catalogued, "god2", GOD_SUB_CUSTOMER)
    deliver(catalogued, *shuffled_with_duplicates(lifecycle))
    settle(engine)
    premium = explained(catalogued, "god2", SUB_ASKED)
    assert (premium["entitlement"], premium["expireDate"]) == (-5, GOD_SUB_AT)


# --- 3 and 4. Grace from the first unpaid period; a failed renewal is grace at once ------------

ALI = "cus_Q1b0Yi7UkcAh2A"  # real 2023-10-16 subscription (alimehndi), paid 2024-05-01
ALI_PERIOD = (1714549345, 1717227745)
RENEWALS = [1717227745, 1719819745, 1722498145]  # the period ends after it, 30 days apart
DAY = 86400


def ali_paid() -> list[Event]:
    return [
        real("2023-10-16__customer.subscription.created__alimehndi__1.json"),
        real("2023-10-16__invoice.paid__alimehndi__1.json"),
        real("2023-10-16__customer.subscription.updated__alimehndi__1.json"),
    ]


def ali_renewal_failed(n: int) -> Event:
    """Edited copy of ali's real paid invoice: the renewal for period n (from RENEWALS[n-1]) was
    not paid (invoice.payment_failed: open, nothing paid)."""
    event = real("2023-10-16__invoice.paid__alimehndi__1.json")
    start, end = RENEWALS[n - 1], RENEWALS[n]
    event.update(id=f"evt_ali_failed_{n}", type="invoice.payment_failed", created=start + 3600)
    invoice = event["data"]["object"]
    invoice.update(id=f"in_ali_{n}", status="open", paid=False, amount_paid=0,
                   billing_reason="subscription_cycle", charge=f"ch_ali_{n}",
                   payment_intent=f"pi_ali_{n}", period_start=start, period_end=start)  # fmt: skip
    for line in invoice["lines"]["data"]:
        line["period"] = {"start": start, "end": end}
    return event


def ali_past_due(n: int) -> Event:
    """Edited copy of ali's real update: past_due in period n (a dunning setting keeps it so
    over renewals), previous_attributes saying what it was."""
    event = real("2023-10-16__customer.subscription.updated__alimehndi__1.json")
    start, end = RENEWALS[n - 1], RENEWALS[n]
    event.update(id=f"evt_ali_past_due_{n}", created=start + 3600)
    sub = event["data"]["object"]
    before = {"status": "active" if n == 1 else "past_due",
              "current_period_start": sub["current_period_start"] if n == 1 else RENEWALS[n - 2],
              "current_period_end": sub["current_period_end"] if n == 1 else start}  # fmt: skip
    sub.update(status="past_due", current_period_start=start, current_period_end=end,
               latest_invoice=f"in_ali_{n}")  # fmt: skip
    event["data"]["previous_attributes"] = before
    return event


def test_a_customer_who_paid_nothing_for_a_month_is_in_retry(catalogued, engine):
    dunning = [*ali_paid(), ali_renewal_failed(1), ali_past_due(1),
               ali_renewal_failed(2), ali_past_due(2)]  # fmt: skip
    asked = RENEWALS[1] + DAY  # a month and a day unpaid: grace ran out long ago
    assert codes_in_every_order(dunning, asked, limit=60) == {-1}
    connect(catalogued, "ali", ALI)
    deliver(catalogued, *shuffled_with_duplicates(dunning))
    settle(engine)
    premium = explained(catalogued, "ali", asked)
    assert (premium["entitlement"], premium["expireDate"]) == (-1, RENEWALS[0] + 3 * DAY)
    assert code_of(catalogued, "ali", RENEWALS[0] + DAY) == 1  # within the first grace


def test_a_failed_renewal_invoice_is_grace_at_once_without_the_subscription_update(
    catalogued, engine
):
    lifecycle = [*ali_paid(), ali_renewal_failed(1)]
    in_grace, after = RENEWALS[0] + 2 * DAY, RENEWALS[0] + 4 * DAY
    assert codes_in_every_order(lifecycle, in_grace) == {1}
    assert codes_in_every_order(lifecycle, after) == {-1}
    connect(catalogued, "ali", ALI)
    deliver(catalogued, *shuffled_with_duplicates(lifecycle))
    settle(engine)
    premium = explained(catalogued, "ali", in_grace)
    assert (premium["entitlement"], premium["expireDate"]) == (1, RENEWALS[0] + 3 * DAY)
    assert premium["explain"]["rule"] == "subscription.past_due.grace.invoice_failed"
    assert "evt_ali_failed_1" in premium["explain"]["eventIds"]
    assert code_of(catalogued, "ali", after) == -1


# --- 5. An item removed with nothing in its place ----------------------------------------------

SRM_CREATED = "customer.subscription.created__srm_c9af9d3__1.json"  # real 2018: two items
SRM_CUSTOMER = "cus_00000000000000"


def srm_items_changed(replacement: dict | None) -> Event:
    """Edited copy of the real 2018 creation: an update a minute later without its second item
    (pr_00000000000001), or with it replaced by `replacement`."""
    event = real(SRM_CREATED)
    before = copy.deepcopy(event["data"]["object"]["items"])
    event.update(id="evt_srm_items_changed", type="customer.subscription.updated",
                 created=event["created"] + 60)  # fmt: skip
    items = event["data"]["object"]["items"]["data"]
    items[1:] = [] if replacement is None else [{**items[1], **replacement}]
    event["data"]["previous_attributes"] = {"items": before}
    return event


SRM_ASKED = 1381080557 + DAY  # within the period the payload names


@pytest.mark.parametrize("replaced", [False, True])
def test_an_item_removed_is_expired_voluntary_and_a_replaced_one_upgraded(
    catalogued, engine, replaced
):
    other_plan = {"id": "si_new", "plan": {"id": "plan_new", "object": "plan",
                                           "product": "pr_00000000000002"}}  # fmt: skip
    lifecycle = [real(SRM_CREATED), srm_items_changed(other_plan if replaced else None)]
    expected = -6 if replaced else -5
    assert codes_in_every_order(lifecycle, SRM_ASKED, "addon") == {expected}
    connect(catalogued, "srm", SRM_CUSTOMER)
    deliver(catalogued, *shuffled_with_duplicates(lifecycle))
    settle(engine)
    addon = explained(catalogued, "srm", SRM_ASKED, "addon")
    rule = "subscription.upgraded" if replaced else "subscription.item_removed"
    assert (addon["entitlement"], addon["explain"]["rule"]) == (expected, rule)
    assert code_of(catalogued, "srm", SRM_ASKED) == 5  # the item kept still grants


# --- 6. A paid one-off invoice is a one-time purchase -------------------------------------------


def test_a_paid_one_off_invoice_is_non_renewing_and_its_refund_revokes_it(catalogued, engine):
    # Real 2020-08-27 pair (stripe-ruby-mock, ids zeroed by its maintainers): a manual invoice
    # of no subscription for prod_00000000000000 (SKU srm_monthly), and its charge refunded.
    # Both events have the id evt_000000000000000000000000: the refund's is made unique.
    paid, refunded = real("invoice.paid__srm__1.json"), real("charge.refunded__srm__1.json")
    refunded["id"] = "evt_000000000000000000refund"
    assert paid["data"]["object"]["subscription"] is None
    asked = paid["created"] + 60
    assert codes_in_every_order([paid], asked) == {3}
    assert codes_in_every_order([paid, refunded], asked) == {-8}
    connect(catalogued, "srm", SRM_CUSTOMER)
    deliver(catalogued, paid, paid)
    settle(engine)
    premium = explained(catalogued, "srm", asked)
    assert (premium["entitlement"], premium["expireDate"]) == (3, None)
    assert premium["explain"]["rule"] == "purchase.lifetime"
    subscriber = catalogued.get("/v1/subscriber", params={"customid": "srm"}, headers=AUTH).json()
    (purchase,) = subscriber["purchases"]
    assert (purchase["purchaseId"], purchase["skuIds"]) == ("pi_000000000000000000000000",
                                                            ["srm_monthly"])  # fmt: skip
    deliver(catalogued, refunded)
    settle(engine)
    assert code_of(catalogued, "srm", asked) == -8


def god_one_off(version: str) -> Event:
    """Edited copy of the real basil godgpt invoice as a one-off: no parent, its line an
    invoice item's (basil: `parent.invoice_item_details`)."""
    event = god_invoice(version)
    event["id"] = "evt_god_one_off"
    invoice = event["data"]["object"]
    invoice.update(id="in_god_one_off", parent=None, billing_reason="manual")
    for line in invoice["lines"]["data"]:
        line["parent"] = {"type": "invoice_item_details", "subscription_item_details": None,
                          "invoice_item_details": {"invoice_item": "ii_1", "proration": False,
                                                   "subscription": None}}  # fmt: skip
    return event


@pytest.mark.parametrize("version", [BASIL, CLOVER])
def test_a_basil_one_off_invoice_is_revoked_through_its_invoice_payment(
    catalogued, engine, version
):
    once = god_one_off(version)
    payment = god_invoice_payment(version, once)
    assert codes_in_every_order([once, payment], ASKED) == {3}
    assert codes_in_every_order([once, payment, god_refund(version)], ASKED) == {-8}
    note = god_credit_note(version, 100)
    note["data"]["object"]["invoice"] = "in_god_one_off"
    assert codes_in_every_order([once, note], ASKED) == {-8}
    connect(catalogued, "god", GOD)
    deliver(catalogued, *shuffled_with_duplicates([once, payment, god_refund(version)]))
    settle(engine)
    assert code_of(catalogued, "god", ASKED) == -8
    assert code_of(catalogued, "god", GOD_PAID_AT + 60) == 3


# --- 9. The explanation names what happened ------------------------------------------------------

LEARNER = "cus_ST1RtHydC4cdb5"
DELETED = "2023-10-16__customer.subscription.deleted__mvpcourseforger__1.json"


def test_a_subscription_canceled_at_once_is_explained_as_canceled_now(catalogued, engine):
    # Real: ended at its period end, as scheduled. Edited copy: canceled at once the day it
    # was asked to cancel (ended_at = canceled_at), cancel_at_period_end still true.
    as_scheduled = real(DELETED)
    at_once = real(DELETED)
    sub = at_once["data"]["object"]
    assert sub["cancel_at_period_end"] is True
    at_once.update(id="evt_deleted_at_once", created=sub["canceled_at"])
    sub.update(ended_at=sub["canceled_at"])
    connect(catalogued, "learner", LEARNER)
    connect(catalogued, "other_learner", "cus_ST1RtHydC4cdb5_copy")
    deliver(catalogued, as_scheduled)
    settle(engine)
    asked = as_scheduled["created"] + 60
    course = explained(catalogued, "learner", asked, "course")
    assert (course["entitlement"], course["explain"]["rule"]) == (
        -5,
        "subscription.canceled.at_period_end",
    )
    sub["customer"] = "cus_ST1RtHydC4cdb5_copy"
    deliver(catalogued, at_once)
    settle(engine)
    course = explained(catalogued, "other_learner", asked, "course")
    assert (course["entitlement"], course["expireDate"]) == (-5, sub["canceled_at"])
    assert course["explain"]["rule"] == "subscription.canceled"
