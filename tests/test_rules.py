"""The entitlement rules, as a specification: one small test per rule, then properties.

Facts are built by hand with the small builders below; every builder gives a fresh event id
unless told otherwise. Times are in days after T0 (Stripe's clock, epoch seconds).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.catalogue import Catalogue, Permission, Sku
from domain.clock import Instant
from domain.facts import (
    ChargeRefunded,
    CheckoutCompleted,
    CreditNoteIssued,
    DisputeObserved,
    Fact,
    InvoiceObserved,
    InvoicePaymentObserved,
    LineItem,
    LineItemsUnresolvable,
    PaymentSucceeded,
    SubscriptionObserved,
)
from domain.ordering import fact_order, in_fact_order
from domain.outcomes import PermissionStatus
from domain.policy import AppPolicy
from domain.rules import (
    FactHistory,
    derive,
    known_facts,
    permissions,
)

DAY = 86400
T0 = 1_700_000_000


def day(n: float) -> int:
    return T0 + int(n * DAY)


CATALOGUE = Catalogue(
    skus=(
        Sku("monthly", "prod_M"),
        Sku("yearly", "prod_Y"),
        Sku("pass_30d", "prod_P", duration="P30D"),
        Sku("lifetime", "prod_L"),
    ),
    permissions=(
        Permission("premium", ("monthly", "yearly", "pass_30d", "lifetime")),
        Permission("pro", ("yearly",)),
        Permission("unused", ()),
    ),
)
POLICY = AppPolicy()  # grace 3 days, leeway 1 day, refund policy "full", no pause

_event_numbers = itertools.count()


def _event_id() -> str:
    return f"evt_{next(_event_numbers)}"


# --- builders -------------------------------------------------------------------------------------


def subscription(
    status: str = "active",
    *,
    at: int = T0,
    sub: str = "sub_1",
    product: str = "prod_M",
    period_start: int = T0,
    period_end: int = day(30),
    event_id: str | None = None,
    **fields,
) -> SubscriptionObserved:
    return SubscriptionObserved(
        event_id=event_id or _event_id(),
        at=at,
        subscription_id=sub,
        customer_id="cus_1",
        status=status,
        items=(LineItem(product_id=product, price_id=f"price_{product}"),),
        current_period_start=period_start,
        current_period_end=period_end,
        **fields,
    )


def invoice(
    *,
    at: int,
    paid: bool = True,
    invoice_id: str = "in_1",
    sub: str = "sub_1",
    product: str = "prod_M",
    period_start: int = T0,
    period_end: int = day(30),
    charge: str | None = "ch_1",
    amount_paid: int | None = None,
    payment_intent: str | None = None,
) -> InvoiceObserved:
    return InvoiceObserved(
        event_id=_event_id(),
        at=at,
        invoice_id=invoice_id,
        customer_id="cus_1",
        subscription_id=sub,
        status="paid" if paid else "open",
        paid=paid,
        payment_failed=not paid,
        lines=(LineItem(product_id=product, period_start=period_start, period_end=period_end),),
        period_start=period_start,
        period_end=period_end,
        amount_paid=(1000 if paid else 0) if amount_paid is None else amount_paid,
        charge_id=charge,
        payment_intent_id=payment_intent,
    )


def invoice_payment(
    *, at: int, invoice_id: str = "in_1", payment_intent: str | None = "pi_9", charge=None
) -> InvoicePaymentObserved:
    """basil and later: which payment paid the invoice (its InvoicePayment)."""
    return InvoicePaymentObserved(
        event_id=_event_id(),
        at=at,
        invoice_payment_id=f"inpay_{invoice_id}",
        invoice_id=invoice_id,
        subscription_id=None,
        payment_intent_id=payment_intent,
        charge_id=charge,
        amount_paid=1000,
        paid=True,
    )


def credit_note(*, at: int, amount: int, invoice_id: str = "in_1") -> CreditNoteIssued:
    return CreditNoteIssued(
        event_id=_event_id(),
        at=at,
        credit_note_id=f"cn_{at}",
        invoice_id=invoice_id,
        customer_id="cus_1",
        amount=amount,
    )


def refund(
    *, at: int, charge: str | None = "ch_1", full: bool = True, payment_intent: str | None = None
) -> ChargeRefunded:
    return ChargeRefunded(
        event_id=_event_id(),
        at=at,
        charge_id=charge,
        payment_intent_id=payment_intent,
        customer_id="cus_1",
        amount=1000,
        amount_refunded=1000 if full else 300,
        full=full,
    )


def dispute(
    *, at: int, charge: str = "ch_1", lost: bool = True, payment_intent: str | None = None
) -> DisputeObserved:
    status = "lost" if lost else "won"
    return DisputeObserved(
        event_id=_event_id(),
        at=at,
        dispute_id=f"dp_{charge}",
        charge_id=charge,
        payment_intent_id=payment_intent,
        status=status,
        lost=lost,
    )


def checkout(
    *,
    at: int,
    session: str = "cs_1",
    payment_intent: str | None = "pi_1",
    products: tuple[str, ...] | None = ("prod_L",),
    paid: bool = True,
    event_id: str | None = None,
) -> CheckoutCompleted:
    lines = None if products is None else tuple(LineItem(product_id=p) for p in products)
    return CheckoutCompleted(
        event_id=event_id or _event_id(),
        at=at,
        session_id=session,
        mode="payment",
        paid=paid,
        customer_id="cus_1",
        payment_intent_id=payment_intent,
        lines=lines,
    )


def payment(
    *,
    at: int,
    payment_intent: str = "pi_1",
    charge: str | None = "ch_p1",
    sku: str | None = None,
    product: str | None = None,
    invoice_id: str | None = None,
    partially_funded: bool = False,
) -> PaymentSucceeded:
    return PaymentSucceeded(
        event_id=_event_id(),
        at=at,
        payment_intent_id=payment_intent,
        charge_id=charge,
        customer_id="cus_1",
        amount=1000,
        invoice_id=invoice_id,
        partially_funded=partially_funded,
        sku_id=sku,
        product_id=product,
    )


def perm(
    facts: list[Fact], at: int, permission: str = "premium", policy: AppPolicy = POLICY
) -> PermissionStatus:
    found = permissions(facts, CATALOGUE, policy, at)
    return next(p for p in found if p.permission_id == permission)


def code(facts: list[Fact], at: int, permission: str = "premium", **kw) -> tuple[int, str]:
    status = perm(facts, at, permission, **kw)
    return status.entitlement, status.rule


# --- the permissions response ---------------------------------------------------------------------


def test_every_permission_is_listed_in_catalogue_order_never_bought_is_minus_9():
    found = permissions([], CATALOGUE, POLICY, T0)
    assert [p.permission_id for p in found] == ["premium", "pro", "unused"]
    assert all(p.entitlement == -9 and p.rule == "never_bought" for p in found)
    assert all(not p.is_valid and p.expire_date is None for p in found)


def test_facts_after_the_instant_asked_are_ignored():
    facts = [subscription("active", at=day(0)), subscription("canceled", at=day(5))]
    assert code(facts, day(1)) == (5, "subscription.active")
    assert perm(facts, day(-1)).entitlement == -9


# --- subscriptions --------------------------------------------------------------------------------


def test_active_renewing_subscription_is_5_until_its_period_end():
    status = perm([subscription("active")], day(10))
    assert (status.entitlement, status.expire_date, status.rule) == (
        5,
        day(30),
        "subscription.active",
    )
    assert status.is_valid
    assert status.accountable_skus[0].sku_id == "monthly"
    assert status.accountable_skus[0].is_trial is False


def test_trialing_is_5_and_marked_as_trial():
    status = perm([subscription("trialing", trial_end=day(7), period_end=day(7))], day(1))
    assert (status.entitlement, status.rule) == (5, "subscription.trialing")
    assert status.accountable_skus[0].is_trial is True


def test_cancel_at_period_end_is_4_until_the_period_end():
    status = perm([subscription("active", cancel_at_period_end=True)], day(10))
    assert (status.entitlement, status.expire_date) == (4, day(30))
    assert status.rule == "subscription.active.cancel_pending"


def test_cancel_at_earlier_than_the_period_end_is_the_expire_date():
    status = perm([subscription("active", cancel_at=day(12))], day(10))
    assert (status.entitlement, status.expire_date) == (4, day(12))


def test_scheduled_cancellation_ends_with_minus_5_when_reached_even_before_the_deletion():
    status = perm([subscription("active", cancel_at_period_end=True)], day(30) + 60)
    assert (status.entitlement, status.expire_date) == (-5, day(30))
    assert status.rule == "subscription.canceled.at_period_end"


def test_past_due_within_grace_is_1_and_expires_at_the_end_of_grace():
    facts = [subscription("past_due", at=day(30), period_start=day(30), period_end=day(60))]
    status = perm(facts, day(31))
    assert (status.entitlement, status.expire_date) == (1, day(33))
    assert status.rule == "subscription.past_due.grace"


def test_past_due_after_grace_is_minus_1():
    facts = [subscription("past_due", at=day(30), period_start=day(30), period_end=day(60))]
    assert code(facts, day(34)) == (-1, "subscription.past_due.retry")


def test_no_grace_means_past_due_is_straight_minus_1():
    facts = [subscription("past_due", at=day(30), period_start=day(30), period_end=day(60))]
    no_grace = AppPolicy(grace_period=0)
    assert code(facts, day(30), policy=no_grace) == (-1, "subscription.past_due.retry")


def test_payment_recovered_after_past_due_is_heard_through_the_paid_invoice():
    facts = [
        subscription("past_due", at=day(30), period_start=day(30), period_end=day(60)),
        invoice(at=day(35), invoice_id="in_2", period_start=day(30), period_end=day(60)),
    ]
    assert code(facts, day(36)) == (5, "subscription.active.invoice_paid")


def test_first_payment_heard_through_the_invoice_before_the_update_grants_access():
    facts = [subscription("incomplete", at=day(0)), invoice(at=day(0))]
    assert code(facts, day(1)) == (5, "subscription.active.invoice_paid")


def test_the_subscription_state_is_listed_with_its_own_code():
    facts = [subscription("active", at=day(0), product="prod_Y"), subscription("active", at=day(1))]
    (state,) = derive(facts, CATALOGUE, POLICY, day(2)).subscriptions
    assert (state.subscription_id, state.status, state.entitlement) == ("sub_1", "active", 5)
    assert (state.sku_ids, state.former_sku_ids) == (("monthly",), ("yearly",))
    assert state.expire_date == state.current_period_end == day(30)


def test_incomplete_is_0():
    assert code([subscription("incomplete")], day(0)) == (0, "subscription.incomplete")


def test_within_the_renewal_leeway_a_renewing_grant_keeps_its_code():
    status = perm([subscription("active")], day(30.5))
    assert (status.entitlement, status.expire_date) == (5, day(30))
    assert status.rule == "subscription.active.renewal_leeway"


def test_no_renewal_heard_after_the_leeway_is_0():
    status = perm([subscription("active")], day(31) + 1)
    assert (status.entitlement, status.expire_date) == (0, day(30))
    assert status.rule == "subscription.renewal_missing"


def test_a_renewal_can_be_heard_through_a_paid_invoice_before_the_subscription_update():
    facts = [
        subscription("active"),
        invoice(at=day(30), invoice_id="in_2", period_start=day(30), period_end=day(60)),
    ]
    status = perm(facts, day(40))
    assert (status.entitlement, status.expire_date) == (5, day(60))


@pytest.mark.parametrize("status", ["unpaid", "incomplete_expired"])
def test_unpaid_and_incomplete_expired_are_minus_2(status):
    assert code([subscription(status, at=day(1))], day(2))[0] == -2


@pytest.mark.parametrize("reason", ["payment_failed", "payment_disputed"])
def test_canceled_for_non_payment_is_minus_2(reason):
    facts = [subscription("canceled", at=day(5), ended_at=day(5), cancellation_reason=reason)]
    status = perm(facts, day(6))
    assert (status.entitlement, status.expire_date) == (-2, day(5))
    assert status.rule == f"subscription.canceled.{reason}"


def test_canceled_by_request_is_minus_5():
    facts = [
        subscription(
            "canceled", at=day(5), ended_at=day(5), cancellation_reason="cancellation_requested"
        )
    ]
    assert code(facts, day(6)) == (-5, "subscription.canceled")


def test_old_payload_canceled_while_its_latest_invoice_had_failed_is_minus_2():
    facts = [
        invoice(at=day(0)),
        invoice(at=day(30), paid=False, invoice_id="in_2", period_start=day(30)),
        subscription("canceled", at=day(40), ended_at=day(40)),
    ]
    assert code(facts, day(41)) == (-2, "subscription.canceled.unpaid_invoice")


def test_old_payload_canceled_after_a_paid_invoice_is_minus_5():
    facts = [invoice(at=day(0)), subscription("canceled", at=day(10), ended_at=day(10))]
    assert code(facts, day(11)) == (-5, "subscription.canceled")


def test_deleted_event_ends_the_subscription():
    facts = [subscription("active", at=day(0)), subscription("active", at=day(3), deleted=True)]
    assert code(facts, day(4))[0] == -5


def test_a_sku_replaced_on_the_same_subscription_is_minus_6_upgraded():
    facts = [
        subscription("active", at=day(0), product="prod_Y"),
        subscription("active", at=day(10), product="prod_M"),
    ]
    pro = perm(facts, day(11), "pro")
    assert (pro.entitlement, pro.expire_date, pro.rule) == (-6, day(10), "subscription.upgraded")
    assert perm(facts, day(11), "premium").entitlement == 5  # the new SKU still grants premium


def test_paused_is_0_unless_the_app_enables_pause():
    facts = [subscription("paused", at=day(5), paused=True)]
    assert code(facts, day(6)) == (0, "subscription.paused")
    assert code(facts, day(6), policy=AppPolicy(pause_enabled=True)) == (-10, "subscription.paused")


def test_paused_collection_honours_the_period_already_paid():
    facts = [subscription("active", at=day(5), paused=True)]
    assert code(facts, day(6)) == (4, "subscription.active.pause_pending")
    assert code(facts, day(31), policy=AppPolicy(pause_enabled=True))[0] == -10


def test_canceled_at_once_is_explained_as_canceled_now_even_with_cancel_at_period_end_set():
    # Stripe may leave cancel_at_period_end true on a subscription then canceled at once.
    now = subscription(
        "canceled", at=day(5), ended_at=day(5), cancel_at_period_end=True, deleted=True
    )
    status = perm([now], day(6))
    assert (status.entitlement, status.expire_date, status.rule) == (
        -5,
        day(5),
        "subscription.canceled",
    )
    at_end = replace(now, at=day(30), ended_at=day(30))
    assert code([at_end], day(31)) == (-5, "subscription.canceled.at_period_end")
    scheduled = replace(now, cancel_at_period_end=False, cancel_at=day(12), ended_at=day(12))
    assert code([scheduled], day(13)) == (-5, "subscription.canceled.at_period_end")


# --- grace: from the first unpaid period, and at once on a failed renewal -------------------------


def test_past_due_over_a_renewal_counts_grace_from_the_first_unpaid_period():
    # A dunning setting leaves the subscription past_due while it renews unpaid.
    first = subscription("past_due", at=day(30), period_start=day(30), period_end=day(60))
    second = subscription("past_due", at=day(60), period_start=day(60), period_end=day(90))
    status = perm([first, second], day(61))
    assert (status.entitlement, status.expire_date) == (-1, day(33))
    assert status.rule == "subscription.past_due.retry"
    # The invoices tell the same without the first past_due snapshot.
    invoices = [
        invoice(at=day(0)),
        invoice(at=day(30), paid=False, invoice_id="in_2", period_start=day(30)),
        invoice(at=day(60), paid=False, invoice_id="in_3", period_start=day(60)),
    ]
    invoices[1] = replace(invoices[1], period_end=day(60), lines=())
    invoices[2] = replace(invoices[2], period_end=day(90), lines=())
    assert code([second, *invoices], day(61))[0] == -1
    assert code([second], day(61))[0] == 1  # nothing says an earlier period went unpaid


def test_a_period_paid_in_between_starts_grace_again():
    facts = [
        subscription("past_due", at=day(30), period_start=day(30), period_end=day(60)),
        invoice(at=day(0)),
        invoice(at=day(35), invoice_id="in_2", period_start=day(30), period_end=day(60)),
        subscription("past_due", at=day(60), period_start=day(60), period_end=day(90)),
    ]
    status = perm(facts, day(61))
    assert (status.entitlement, status.expire_date) == (1, day(63))


def renewal_failed() -> list[Fact]:
    """Paid for days 0-30; the renewal for 30-60 failed at day 30; no update heard since."""
    return [
        subscription("active", at=day(0)),
        invoice(at=day(0)),
        invoice(
            at=day(30), paid=False, invoice_id="in_2", period_start=day(30), period_end=day(60)
        ),
    ]


def test_a_failed_renewal_invoice_puts_the_subscription_in_grace_at_once():
    facts = renewal_failed()
    status = perm(facts, day(31))
    assert (status.entitlement, status.expire_date) == (1, day(33))
    assert status.rule == "subscription.past_due.grace.invoice_failed"
    assert set(status.event_ids) == {facts[0].event_id, facts[2].event_id}
    assert code(facts, day(34)) == (-1, "subscription.past_due.retry.invoice_failed")
    assert code(facts, day(29))[0] == 5  # before the failure, nothing was wrong
    assert code(facts, day(31), policy=AppPolicy(grace_period=0))[0] == -1


def test_a_failed_renewal_counts_grace_from_its_own_period_even_without_the_paid_invoice():
    # The paid invoice for days 0-30 is not heard of: the active snapshot's period was not
    # what went unpaid, the failed invoice's is.
    facts = [renewal_failed()[0], renewal_failed()[2]]
    status = perm(facts, day(31))
    assert (status.entitlement, status.expire_date) == (1, day(33))


def test_a_failed_renewal_voided_since_is_owed_no_more():
    voided = replace(renewal_failed()[2], event_id="evt_void", at=day(31), status="void")
    voided = replace(voided, payment_failed=False)
    assert code([*renewal_failed(), voided], day(31))[0] == 5  # within the renewal leeway


def test_a_failed_renewal_paid_since_renews():
    paid = invoice(at=day(32), invoice_id="in_2", period_start=day(30), period_end=day(60))
    status = perm([*renewal_failed(), paid], day(40))
    assert (status.entitlement, status.expire_date) == (5, day(60))


def test_a_failure_older_than_the_snapshot_or_for_an_older_period_changes_nothing():
    newer = subscription("active", at=day(31), period_start=day(30), period_end=day(60))
    assert code([*renewal_failed(), newer], day(32))[0] == 5
    old = invoice(at=day(10), paid=False, invoice_id="in_0", period_start=day(-30), period_end=T0)
    assert code([subscription("active", at=day(0)), invoice(at=day(0)), old], day(11))[0] == 5


# --- snapshots of the same second -----------------------------------------------------------------


def test_a_creation_comes_before_an_update_of_the_same_second():
    # Created set to cancel at the period end, then (same second) the cancellation undone:
    # the lifecycle rank alone would keep the cancel flag.
    created = subscription("active", cancel_at_period_end=True, creation=True)
    undone = subscription("active", previous=(("cancel_at_period_end", True),))
    for facts in ([created, undone], [undone, created]):
        assert code(facts, day(1)) == (5, "subscription.active")


def test_an_update_comes_after_the_state_its_previous_attributes_describe():
    # Trial over, the first payment failed (past_due), then paid at once (active): one second.
    trial = subscription("trialing", at=day(0) - 60, creation=True)
    failed = subscription("past_due", previous=(("status", "trialing"),))
    paid = subscription("active", previous=(("status", "past_due"),))
    assert code([trial, failed, paid], day(1)) == (5, "subscription.active")
    # Without what it describes, the lifecycle rank decides (past_due is further along).
    assert code([trial, failed, replace(paid, previous=())], day(1))[0] == 1


def test_a_change_and_its_undoing_in_one_second_end_as_undone():
    before = subscription("active", at=day(0) - 60, creation=True)
    canceled = subscription(
        "active", cancel_at_period_end=True, previous=(("cancel_at_period_end", False),)
    )
    undone = subscription("active", previous=(("cancel_at_period_end", True),))
    assert code([before, canceled, undone], day(1)) == (5, "subscription.active")
    flag_set_last = [replace(before, cancel_at_period_end=True), undone, canceled]
    assert code(flag_set_last, day(1))[0] == 4


def test_a_deletion_comes_last_whatever_its_event_id():
    deleted = subscription("canceled", deleted=True, event_id="evt_a", ended_at=T0)
    updated = subscription("active", event_id="evt_b", previous=(("status", "canceled"),))
    assert code([deleted, updated], day(1))[0] == -5


def test_event_ids_never_order_snapshots_of_one_second():
    a = subscription("active", cancel_at_period_end=True, event_id="evt_a")
    b = subscription("active", cancel_at=day(20), event_id="evt_b")
    swapped = [replace(a, event_id="evt_b"), replace(b, event_id="evt_a")]
    assert perm([a, b], day(1)).expire_date == perm(swapped, day(1)).expire_date


# --- items removed, items replaced ----------------------------------------------------------------


def two_items(**fields) -> SubscriptionObserved:
    both = tuple(LineItem(product_id=p, price_id=f"price_{p}") for p in ("prod_M", "prod_Y"))
    return replace(subscription("active", **fields), items=both)


def test_an_item_removed_with_nothing_in_its_place_is_expired_voluntary():
    facts = [two_items(at=day(0)), subscription("active", at=day(10), product="prod_M")]
    pro = perm(facts, day(11), "pro")
    assert (pro.entitlement, pro.expire_date, pro.rule) == (
        -5,
        day(10),
        "subscription.item_removed",
    )
    assert perm(facts, day(11), "premium").entitlement == 5


def test_an_item_replaced_in_the_same_update_is_upgraded():
    replaced = replace(
        subscription("active", at=day(10)),
        items=tuple(LineItem(product_id=p, price_id=f"price_{p}") for p in ("prod_M", "prod_X")),
    )
    assert code([two_items(at=day(0)), replaced], day(11), "pro")[0] == -6


# --- refunds and disputes against subscriptions ---------------------------------------------------


def test_full_refund_of_the_latest_paid_invoice_is_minus_8():
    facts = [subscription("active"), invoice(at=day(0)), refund(at=day(3))]
    status = perm(facts, day(4))
    assert (status.entitlement, status.expire_date, status.rule) == (-8, day(3), "refund.full")


def test_refund_matches_through_the_payment_of_a_pre_basil_invoice():
    facts = [
        subscription("active"),
        invoice(at=day(0), charge=None),
        payment(at=day(0), charge="ch_9", invoice_id="in_1"),
        refund(at=day(3), charge="ch_9"),
    ]
    assert code(facts, day(4)) == (-8, "refund.full")


def test_partial_refund_keeps_access_by_default():
    facts = [subscription("active"), invoice(at=day(0)), refund(at=day(3), full=False)]
    assert code(facts, day(4))[0] == 5


def test_refund_policy_any_revokes_on_a_partial_refund():
    facts = [subscription("active"), invoice(at=day(0)), refund(at=day(3), full=False)]
    assert code(facts, day(4), policy=AppPolicy(refund_policy="any")) == (-8, "refund.partial")


def test_refund_policy_never_keeps_access_on_a_full_refund():
    facts = [subscription("active"), invoice(at=day(0)), refund(at=day(3))]
    assert code(facts, day(4), policy=AppPolicy(refund_policy="never"))[0] == 5


def test_a_lost_dispute_is_minus_8_and_a_won_one_changes_nothing():
    facts = [subscription("active"), invoice(at=day(0))]
    assert code([*facts, dispute(at=day(3))], day(4)) == (-8, "dispute.lost")
    assert code([*facts, dispute(at=day(3), lost=False)], day(4))[0] == 5


def test_refund_of_an_older_invoice_changes_nothing_once_a_later_one_was_paid():
    facts = [
        subscription("active", at=day(30), period_start=day(30), period_end=day(60)),
        invoice(at=day(0)),
        invoice(
            at=day(30), invoice_id="in_2", charge="ch_2", period_start=day(30), period_end=day(60)
        ),
        refund(at=day(31), charge="ch_1"),
    ]
    assert code(facts, day(32))[0] == 5


def test_canceled_then_refunded_names_the_refund():
    facts = [
        invoice(at=day(0)),
        subscription(
            "canceled", at=day(5), ended_at=day(5), cancellation_reason="cancellation_requested"
        ),
        refund(at=day(6)),
    ]
    status = perm(facts, day(7))
    assert (status.entitlement, status.rule, status.expire_date) == (-8, "refund.full", day(5))


def test_refunded_then_canceled_names_the_cancellation():
    facts = [
        invoice(at=day(0)),
        refund(at=day(5)),
        subscription(
            "canceled", at=day(6), ended_at=day(6), cancellation_reason="cancellation_requested"
        ),
    ]
    status = perm(facts, day(7))
    assert (status.entitlement, status.rule, status.expire_date) == (
        -5,
        "subscription.canceled",
        day(5),
    )


# --- refunds and disputes from basil on: through the InvoicePayment -------------------------------


def basil_subscription_paid() -> list[Fact]:
    """A basil subscription and its paid invoice, which names no charge or payment intent; its
    InvoicePayment says pi_9 (charge ch_9) paid it."""
    return [
        subscription("active"),
        invoice(at=day(0), charge=None),
        invoice_payment(at=day(0), charge="ch_9"),
    ]


def test_from_basil_a_refund_reaches_the_invoice_through_its_invoice_payment():
    facts = basil_subscription_paid()
    assert code(facts, day(4)) == (5, "subscription.active")
    assert code([*facts, refund(at=day(3), charge="ch_9")], day(4)) == (-8, "refund.full")
    by_intent = refund(at=day(3), charge="ch_other", payment_intent="pi_9")
    assert code([*facts, by_intent], day(4)) == (-8, "refund.full")
    # Without the InvoicePayment nothing names that charge: the refund cannot reach it.
    assert code([*facts[:2], refund(at=day(3), charge="ch_9")], day(4))[0] == 5


def test_from_basil_a_lost_dispute_reaches_the_invoice_through_its_invoice_payment():
    facts = basil_subscription_paid()
    lost = dispute(at=day(3), charge="ch_9", payment_intent="pi_9")
    assert code([*facts, lost], day(4)) == (-8, "dispute.lost")
    won = dispute(at=day(3), charge="ch_9", payment_intent="pi_9", lost=False)
    assert code([*facts, won], day(4))[0] == 5


def test_a_refund_of_a_basil_payment_of_an_older_invoice_changes_nothing():
    facts = [
        subscription("active", at=day(30), period_start=day(30), period_end=day(60)),
        invoice(at=day(0), charge=None),
        invoice_payment(at=day(0), charge="ch_9"),
        invoice(
            at=day(30), invoice_id="in_2", charge=None, period_start=day(30), period_end=day(60)
        ),
        invoice_payment(at=day(30), invoice_id="in_2", payment_intent="pi_10"),
    ]
    assert code([*facts, refund(at=day(31), charge="ch_9")], day(32))[0] == 5
    assert code([*facts, refund(at=day(31), payment_intent="pi_10")], day(32))[0] == -8


def test_a_credit_note_for_the_whole_amount_paid_revokes_under_the_refund_policy():
    facts = [subscription("active"), invoice(at=day(0), amount_paid=1000)]
    whole = credit_note(at=day(3), amount=1000)
    status = perm([*facts, whole], day(4))
    assert (status.entitlement, status.expire_date) == (-8, day(3))
    assert status.rule == "refund.full.credit_note"
    assert code([*facts, whole], day(4), policy=AppPolicy(refund_policy="never"))[0] == 5
    part = credit_note(at=day(3), amount=300)
    assert code([*facts, part], day(4))[0] == 5
    any_refund = AppPolicy(refund_policy="any")
    assert code([*facts, part], day(4), policy=any_refund) == (-8, "refund.partial.credit_note")


def test_a_credit_note_is_partial_while_the_amount_paid_is_unknown():
    note = credit_note(at=day(3), amount=1000)
    facts = [subscription("active"), invoice(at=day(0), amount_paid=0), note]
    assert code(facts, day(4))[0] == 5  # nothing known to be paid: never "the whole amount"
    facts = [subscription("active"), invoice(at=day(0)), replace(note, invoice_amount_paid=1000)]
    assert code(facts, day(4))[0] == -8  # the note's expanded invoice says it


# --- one-off invoices are one-time purchases ------------------------------------------------------


def one_off(*, at: int = day(0), product: str = "prod_L", paid: bool = True, **kw) -> Fact:
    return invoice(at=at, sub=None, product=product, paid=paid, invoice_id="in_once", **kw)


def test_a_paid_one_off_invoice_grants_its_products_as_a_one_time_purchase():
    status = perm([one_off()], day(100))
    assert (status.entitlement, status.expire_date, status.rule) == (3, None, "purchase.lifetime")
    (purchase,) = derive([one_off()], CATALOGUE, POLICY, day(1)).purchases
    assert (purchase.purchase_id, purchase.invoice_id) == ("in_once", "in_once")
    assert derive([one_off()], CATALOGUE, POLICY, day(1)).subscriptions == ()


def test_a_one_off_invoice_for_a_pass_lasts_the_skus_duration():
    facts = [one_off(product="prod_P")]
    assert (perm(facts, day(29)).entitlement, perm(facts, day(29)).expire_date) == (3, day(30))
    assert code(facts, day(31)) == (-5, "purchase.duration_elapsed")


def test_an_unpaid_one_off_invoice_grants_nothing():
    assert perm([one_off(paid=False)], day(1)).entitlement == -9


def test_a_one_off_invoice_is_revoked_by_its_refund_credit_note_or_lost_dispute():
    pre_basil = [one_off(charge="ch_once")]
    assert code([*pre_basil, refund(at=day(2), charge="ch_once")], day(3)) == (-8, "refund.full")
    basil = [one_off(charge=None), invoice_payment(at=day(0), invoice_id="in_once")]
    by_intent = refund(at=day(2), charge=None, payment_intent="pi_9")
    assert code([*basil, by_intent], day(3)) == (-8, "refund.full")
    lost = dispute(at=day(2), charge="ch_x", payment_intent="pi_9")
    assert code([*basil, lost], day(3)) == (-8, "dispute.lost")
    note = credit_note(at=day(2), amount=1000, invoice_id="in_once")
    assert code([*basil, note], day(3)) == (-8, "refund.full.credit_note")
    assert code([*basil, note], day(3), policy=AppPolicy(refund_policy="never"))[0] == 3


def test_a_checkout_and_the_invoice_it_made_are_one_purchase():
    session = replace(checkout(at=day(0), products=None), invoice_id="in_once")
    facts = [session, one_off(payment_intent="pi_1")]
    (purchase,) = derive(facts, CATALOGUE, POLICY, day(1)).purchases
    assert (purchase.session_id, purchase.invoice_id, purchase.sku_ids) == (
        "cs_1",
        "in_once",
        ("lifetime",),
    )


def test_a_checkout_refused_by_stripe_says_why_it_stays_unresolved():
    failure = LineItemsUnresolvable(
        event_id="line_items:1", at=day(1), session_id="cs_1", status=404, reason="No such"
    )
    (purchase,) = derive(
        [checkout(at=day(0), products=None), failure], CATALOGUE, POLICY, day(2)
    ).purchases
    assert (purchase.unresolved, purchase.resolution_error) == (True, "HTTP 404: No such")
    resolved = [checkout(at=day(0), products=("prod_L",)), failure]
    assert derive(resolved, CATALOGUE, POLICY, day(2)).purchases[0].resolution_error is None


# --- one-time purchases ---------------------------------------------------------------------------


def test_a_paid_lifetime_purchase_is_3_with_no_expire_date():
    status = perm([checkout(at=day(0))], day(100))
    assert (status.entitlement, status.expire_date, status.rule) == (3, None, "purchase.lifetime")


def test_a_pass_lasts_its_skus_duration_from_the_payment():
    facts = [checkout(at=day(0), products=("prod_P",))]
    assert (perm(facts, day(29)).entitlement, perm(facts, day(29)).expire_date) == (3, day(30))
    status = perm(facts, day(30))
    assert (status.entitlement, status.expire_date) == (-5, day(30))
    assert status.rule == "purchase.duration_elapsed"


def test_an_unpaid_checkout_grants_nothing():
    assert perm([checkout(at=day(0), paid=False)], day(1)).entitlement == -9


def test_a_checkout_whose_products_are_unknown_is_unresolved_and_grants_nothing():
    derivation = derive([checkout(at=day(0), products=None)], CATALOGUE, POLICY, day(1))
    (purchase,) = derivation.purchases
    assert purchase.unresolved and purchase.sku_ids is None
    assert purchase.rule == "purchase.unresolved"
    assert derivation.permissions[0].entitlement == -9


def test_a_later_checkout_fact_with_lines_resolves_the_purchase():
    facts = [checkout(at=day(0), products=None), checkout(at=day(0), products=("prod_L",))]
    derivation = derive(facts, CATALOGUE, POLICY, day(1))
    assert [p.sku_ids for p in derivation.purchases] == [("lifetime",)]
    assert derivation.permissions[0].entitlement == 3


def test_the_checkout_and_its_payment_intent_are_one_purchase():
    facts = [checkout(at=day(0)), payment(at=day(0), sku="lifetime")]
    (purchase,) = derive(facts, CATALOGUE, POLICY, day(1)).purchases
    assert purchase.purchase_id == "pi_1" and purchase.session_id == "cs_1"


def test_a_payment_with_a_sku_hint_is_a_purchase():
    assert code([payment(at=day(0), sku="pass_30d")], day(1)) == (3, "purchase.pass")
    assert code([payment(at=day(0), product="prod_L")], day(1)) == (3, "purchase.lifetime")


def test_payments_of_invoices_or_partially_funded_are_not_purchases():
    assert perm([payment(at=day(0), sku="lifetime", invoice_id="in_1")], day(1)).entitlement == -9
    assert (
        perm([payment(at=day(0), sku="lifetime", partially_funded=True)], day(1)).entitlement == -9
    )


def test_refunded_purchase_is_minus_8():
    facts = [checkout(at=day(0)), refund(at=day(2), charge=None, payment_intent="pi_1")]
    status = perm(facts, day(3))
    assert (status.entitlement, status.expire_date, status.rule) == (-8, day(2), "refund.full")
    assert derive(facts, CATALOGUE, POLICY, day(3)).purchases[0].refunded


def test_a_pass_refunded_before_it_ran_out_stays_refunded():
    facts = [
        checkout(at=day(0), products=("prod_P",)),
        refund(at=day(2), charge=None, payment_intent="pi_1"),
    ]
    assert code(facts, day(40)) == (-8, "refund.full")


# --- several grantors -----------------------------------------------------------------------------


def test_the_best_grant_wins_and_all_valid_grants_are_accountable():
    facts = [subscription("active", cancel_at_period_end=True), checkout(at=day(0))]
    status = perm(facts, day(1))
    assert (status.entitlement, status.expire_date) == (4, day(30))
    assert {g.sku_id for g in status.accountable_skus} == {"monthly", "lifetime"}


def test_among_equal_codes_the_later_expire_date_wins_lifetime_latest():
    facts = [
        checkout(at=day(0), products=("prod_P",)),
        checkout(at=day(0), session="cs_2", payment_intent="pi_2"),
    ]
    assert perm(facts, day(1)).expire_date is None


def test_losing_one_grantor_keeps_what_another_grants():
    facts = [
        subscription(
            "canceled", sub="sub_1", at=day(5), cancellation_reason="cancellation_requested"
        ),
        subscription("active", sub="sub_2", at=day(1), period_end=day(31)),
    ]
    status = perm(facts, day(6))
    assert (status.entitlement, status.expire_date) == (5, day(31))
    assert [g.source_id for g in status.accountable_skus] == ["sub_2"]


def test_when_nothing_is_valid_the_grant_that_ended_last_answers():
    facts = [
        subscription(
            "canceled",
            sub="sub_1",
            at=day(5),
            ended_at=day(5),
            cancellation_reason="payment_failed",
        ),
        subscription(
            "canceled",
            sub="sub_2",
            at=day(8),
            ended_at=day(8),
            cancellation_reason="cancellation_requested",
        ),
    ]
    status = perm(facts, day(9))
    assert (status.entitlement, status.expire_date) == (-5, day(8))
    assert len(status.accountable_skus) == 1


# --- order independence, by example ---------------------------------------------------------------


def test_snapshots_of_the_same_second_are_ordered_by_lifecycle_not_by_delivery():
    created = subscription("incomplete", at=day(0))
    updated = subscription("active", at=day(0))
    assert (
        code([created, updated], day(1))
        == code([updated, created], day(1))
        == (5, "subscription.active")
    )


def test_a_duplicated_event_counts_once():
    facts = [checkout(at=day(0), products=("prod_P",))]
    assert derive(facts * 3, CATALOGUE, POLICY, day(1)) == derive(facts, CATALOGUE, POLICY, day(1))


# --- properties -----------------------------------------------------------------------------------

STATUSES = [
    "incomplete",
    "trialing",
    "active",
    "past_due",
    "unpaid",
    "paused",
    "canceled",
    "incomplete_expired",
]
STEPS = [0, 1, DAY, 3 * DAY, 15 * DAY, 31 * DAY]  # 0 and 1 s: ties and near-ties are common


@st.composite
def subscription_lifecycle(draw, prefix: str) -> list[Fact]:
    """Snapshots, invoices, refunds and disputes of one subscription."""
    sub = f"sub_{prefix}"
    facts: list[Fact] = []
    t = T0
    for i in range(draw(st.integers(1, 4))):
        t += draw(st.sampled_from(STEPS))
        start = T0 + 30 * DAY * draw(st.integers(0, 2))
        facts.append(
            SubscriptionObserved(
                event_id=f"evt_{prefix}_s{i}",
                at=t,
                subscription_id=sub,
                customer_id="cus_1",
                status=draw(st.sampled_from(STATUSES)),
                items=(LineItem(product_id=draw(st.sampled_from(["prod_M", "prod_Y", "prod_X"]))),),
                current_period_start=start,
                current_period_end=start + 30 * DAY,
                cancel_at_period_end=draw(st.booleans()),
                cancellation_reason=draw(
                    st.sampled_from([None, "cancellation_requested", "payment_failed"])
                ),
                paused=draw(st.booleans()),
                deleted=draw(st.booleans()),
                creation=draw(st.booleans()),
                previous=draw(PREVIOUS),
            )
        )
    invoices = draw(st.integers(0, 3))
    for j in range(invoices):
        paid = draw(st.booleans())
        start = T0 + 30 * DAY * draw(st.integers(0, 3))
        basil = draw(st.booleans())  # the invoice names no charge: its InvoicePayment does
        invoice_id = f"in_{prefix}_{draw(st.integers(0, 1))}"
        at = T0 + draw(st.sampled_from(STEPS)) * draw(st.integers(0, 3))
        facts.append(
            InvoiceObserved(
                event_id=f"evt_{prefix}_i{j}",
                at=at,
                invoice_id=invoice_id,
                customer_id="cus_1",
                subscription_id=sub,
                status=draw(st.sampled_from(["open", "void"])) if not paid else "paid",
                paid=paid,
                payment_failed=not paid,
                lines=(LineItem(product_id=draw(st.sampled_from(["prod_M", "prod_Y"]))),),
                period_start=start,
                period_end=start + 30 * DAY,
                amount_paid=1000 if paid else 0,
                charge_id=None if basil else f"ch_{prefix}_{j}",
            )
        )
        if basil and draw(st.booleans()):
            facts.append(
                replace(
                    invoice_payment(at=at, invoice_id=invoice_id, charge=f"ch_{prefix}_{j}"),
                    event_id=f"evt_{prefix}_ip{j}",
                    payment_intent_id=None,
                )
            )
    invoice_ids = [f"in_{prefix}_{n}" for n in (0, 1)]
    facts += draw(money_taken_back(prefix, [f"ch_{prefix}_{j}" for j in range(invoices)]))
    facts += draw(credit_notes(prefix, invoice_ids if invoices else []))
    return facts


# What an update's previous_attributes may say (some describe another drawn snapshot).
PREVIOUS = st.sampled_from(
    [
        (),
        (("status", "active"),),
        (("status", "past_due"),),
        (("status", "incomplete"),),
        (("cancel_at_period_end", False),),
        (("cancel_at_period_end", True),),
        (("cancel_at_period_end", False), ("status", "trialing")),
        (("items", "/prod_M"),),
    ]
)


@st.composite
def credit_notes(draw, prefix: str, invoice_ids: list[str]) -> list[Fact]:
    if not invoice_ids:
        return []
    return [
        replace(
            credit_note(
                at=T0 + draw(st.sampled_from(STEPS)) * draw(st.integers(0, 3)),
                amount=draw(st.sampled_from([300, 1000])),
                invoice_id=draw(st.sampled_from(invoice_ids)),
            ),
            event_id=f"evt_{prefix}_cn{k}",
        )
        for k in range(draw(st.integers(0, 1)))
    ]


@st.composite
def purchase_lifecycle(draw, prefix: str) -> list[Fact]:
    """Checkouts (resolved or not) and payments of one payment intent, and refunds of it."""
    pi, charge = f"pi_{prefix}", f"ch_{prefix}_p"
    facts: list[Fact] = []
    for k in range(draw(st.integers(0, 2))):
        products = draw(st.sampled_from([None, ("prod_P",), ("prod_L",), ("prod_Y",)]))
        facts.append(
            checkout(
                at=T0 + draw(st.sampled_from(STEPS)),
                session=f"cs_{prefix}",
                payment_intent=pi,
                products=products,
                paid=draw(st.booleans()),
                event_id=f"evt_{prefix}_c{k}",
            )
        )
    if draw(st.booleans()):
        sku = draw(st.sampled_from([None, "pass_30d", "lifetime"]))
        fact = payment(
            at=T0 + draw(st.sampled_from(STEPS)), payment_intent=pi, charge=charge, sku=sku
        )
        facts.append(PaymentSucceeded(**{**fact.__dict__, "event_id": f"evt_{prefix}_p"}))
    if draw(st.booleans()):  # Stripe refused its line items
        facts.append(
            LineItemsUnresolvable(
                event_id=f"line_items:{prefix}",
                at=T0 + draw(st.sampled_from(STEPS)),
                session_id=f"cs_{prefix}",
                status=404,
                reason="No such checkout.session",
            )
        )
    if draw(st.booleans()):  # a one-off invoice, paid by this payment intent (or its charge)
        once = invoice(
            at=T0 + draw(st.sampled_from(STEPS)),
            sub=None,
            invoice_id=f"in_{prefix}_once",
            product=draw(st.sampled_from(["prod_P", "prod_L"])),
            paid=draw(st.booleans()),
            charge=None,
        )
        facts.append(replace(once, event_id=f"evt_{prefix}_once"))
        if draw(st.booleans()):
            paid_by = invoice_payment(at=once.at, invoice_id=once.invoice_id, payment_intent=pi)
            facts.append(replace(paid_by, event_id=f"evt_{prefix}_once_ip", charge_id=charge))
        facts += draw(credit_notes(prefix, [once.invoice_id]))
    facts += draw(money_taken_back(prefix, [charge]))
    return facts


@st.composite
def money_taken_back(draw, prefix: str, charges: list[str]) -> list[Fact]:
    if not charges:
        return []
    facts: list[Fact] = []
    for k in range(draw(st.integers(0, 2))):
        charge = draw(st.sampled_from(charges))
        at = T0 + draw(st.sampled_from(STEPS)) * draw(st.integers(0, 3))
        if draw(st.booleans()):
            full = draw(st.booleans())
            facts.append(
                ChargeRefunded(
                    event_id=f"evt_{prefix}_r{k}",
                    at=at,
                    charge_id=charge,
                    payment_intent_id=None,
                    customer_id="cus_1",
                    amount=1000,
                    amount_refunded=1000 if full else 300,
                    full=full,
                )
            )
        else:
            lost = draw(st.booleans())
            facts.append(
                DisputeObserved(
                    event_id=f"evt_{prefix}_d{k}",
                    at=at,
                    dispute_id=f"dp_{prefix}_{k}",
                    charge_id=charge,
                    payment_intent_id=None,
                    status="lost" if lost else "won",
                    lost=lost,
                )
            )
    return facts


@st.composite
def history(draw, prefix: str = "a") -> list[Fact]:
    """Several subscriptions and purchases of one customer over time."""
    facts: list[Fact] = []
    for n in range(draw(st.integers(0, 2))):
        facts += draw(subscription_lifecycle(f"{prefix}s{n}"))
    for n in range(draw(st.integers(0, 2))):
        facts += draw(purchase_lifecycle(f"{prefix}p{n}"))
    return facts


policies = st.builds(
    AppPolicy,
    grace_period=st.sampled_from([0, 3 * DAY]),
    renewal_leeway=st.sampled_from([0, DAY]),
    refund_policy=st.sampled_from(["full", "any", "never"]),
    pause_enabled=st.booleans(),
)
instants = st.integers(T0 - DAY, T0 + 120 * DAY)


@settings(max_examples=300, deadline=None)
@given(st.data(), history(), policies, instants)
def test_any_delivery_order_and_any_duplication_give_the_same_answer(data, facts, policy, at):
    shuffled = data.draw(st.permutations(facts))
    duplicates = data.draw(st.lists(st.sampled_from(facts), max_size=5)) if facts else []
    expected = derive(facts, CATALOGUE, policy, at)
    assert derive([*shuffled, *duplicates], CATALOGUE, policy, at) == expected


@settings(max_examples=300, deadline=None)
@given(st.data(), history(), policies, instants)
def test_a_history_sorted_once_answers_every_instant_as_the_facts_themselves(
    data, facts, policy, at
):
    """`FactHistory` (what audit queries keep per customer): the same derivation at any
    instant, and, as of any recording time, the same as the facts recorded by then."""
    copies = [*facts, *data.draw(st.lists(st.sampled_from(facts), max_size=5))] if facts else []
    recorded = [(fact, float(data.draw(st.integers(0, 5)))) for fact in copies]
    kept = FactHistory(recorded)
    at = data.draw(st.sampled_from([at, *(fact.at for fact in facts)]))  # ties with a fact too
    assert derive(kept, CATALOGUE, policy, at) == derive(facts, CATALOGUE, policy, at)
    instant, from_the_facts = Instant(at), Instant(at)  # and it holds as long
    assert derive(kept, CATALOGUE, policy, instant) == derive(facts, CATALOGUE, policy, at)
    derive(facts, CATALOGUE, policy, from_the_facts)
    assert instant.next_change == from_the_facts.next_change
    known_at = data.draw(st.one_of(st.none(), st.integers(0, 5)))
    by_then = [fact for fact, when in recorded if known_at is None or when <= known_at]
    as_known = derive(kept.known_by(known_at), CATALOGUE, policy, at)
    assert as_known == derive(by_then, CATALOGUE, policy, at)


@settings(max_examples=300, deadline=None)
@given(st.data(), history())
def test_a_history_keeps_each_distinct_fact_once_in_fact_order_from_its_first_recording(
    data, facts
):
    """`FactHistory` deduplicates only within runs tied on (clock, event, kind): the same facts,
    the very same objects (the first given of equal ones), in the same order, with the same
    recording times as deduplicating all of them by hash, then sorting by `fact_order`."""
    if facts:  # some facts tied on clock and event with others, some equal copies
        tied = data.draw(st.lists(st.sampled_from(facts), max_size=6))
        facts = [*facts, *(replace(fact, at=T0, event_id="evt_tie") for fact in tied)]
        facts += [replace(fact) for fact in data.draw(st.lists(st.sampled_from(facts)))]
    given_facts = data.draw(st.permutations(facts))
    recorded = [(fact, float(data.draw(st.integers(0, 5)))) for fact in given_facts]
    first: dict[Fact, float] = {}
    for fact, when in recorded:
        if first.setdefault(fact, when) > when:
            first[fact] = when
    expected = sorted(first, key=fact_order)
    for kept in (FactHistory(recorded), FactHistory.of(given_facts, [w for _, w in recorded])):
        assert kept.facts == tuple(expected)
        assert all(a is b for a, b in zip(kept.facts, expected, strict=True))
        for known_at in range(6):
            by_then = tuple(fact for fact in expected if first[fact] <= known_at)
            assert kept.known_by(known_at).facts == by_then


@settings(max_examples=300, deadline=None)
@given(history("a"), history("b"), policies, instants)
def test_losing_one_grantor_never_revokes_what_another_grants(mine, other, policy, at):
    alone = permissions(mine, CATALOGUE, policy, at)
    others = permissions(other, CATALOGUE, policy, at)
    together = permissions(mine + other, CATALOGUE, policy, at)
    for a, b, both in zip(alone, others, together, strict=True):
        assert both.is_valid == (a.is_valid or b.is_valid)
        if both.is_valid:
            assert both.entitlement == max(p.entitlement for p in (a, b) if p.is_valid)
            accountable = (
                {*a.accountable_skus, *b.accountable_skus} if a.is_valid and b.is_valid else None
            )
            if accountable is not None:
                assert set(both.accountable_skus) == accountable


def test_a_subscription_heard_of_only_through_a_paid_invoice_is_5_for_the_period_paid():
    # Apps set up like Glassfy's do not receive customer.subscription.created.
    facts = [invoice(at=T0)]
    assert code(facts, at=day(10)) == (5, "subscription.active")
    assert code(facts, at=day(30) + DAY // 2) == (5, "subscription.active.renewal_leeway")
    assert code(facts, at=day(33)) == (0, "subscription.renewal_missing")


def test_a_failed_invoice_alone_grants_nothing():
    assert code([invoice(at=T0, paid=False)], at=day(1))[0] == -9


def test_facts_tied_on_clock_event_and_kind_are_ordered_by_their_content():
    # The content (repr) is compared lazily, only on such ties; the order is the one of
    # (at, event_id, kind, repr(fact)).
    same = dict(at=T0, event_id="evt_same")
    tied = [
        subscription(status=status, product=product, **same)
        for status in ("active", "past_due", "canceled")
        for product in ("prod_M", "prod_Y")
    ]
    facts = [*tied, subscription(status="active", at=T0 - 1), invoice(at=T0)]
    by_repr = sorted(facts, key=lambda f: (f.at, f.event_id, f.kind, repr(f)))
    for order in itertools.permutations(facts[:4]):
        shuffled = [*order, *facts[4:]]
        assert sorted(shuffled, key=fact_order) == by_repr
        assert in_fact_order(shuffled) == by_repr
        assert list(known_facts(shuffled, T0)) == by_repr
    assert max(facts, key=fact_order) == by_repr[-1]
    assert min(facts, key=fact_order) == by_repr[0]
    assert fact_order(tied[0]) == fact_order(tied[0]) != fact_order(tied[1])
