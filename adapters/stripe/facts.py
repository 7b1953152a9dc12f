"""Stripe webhook events -> version-neutral facts (`domain/facts.py`).

The one place that reads Stripe payload shapes. `FACT_READERS` maps each acted-on event type to a
short reader named after it; field locations that moved between API versions are read through
`adapters/stripe/fields.py`. Readers never raise on a missing, null or wrongly typed field: a
fact's field is then None/False, and an event that does not even name its object yields no fact.
Unknown event types yield no fact (the raw event is still recorded elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapters.stripe.fields import (
    amount_refunded,
    credit_note_gives_back,
    credit_note_refunds,
    dig,
    display_items,
    first,
    id_of,
    integer,
    invoice_customid,
    invoice_is_paid,
    invoice_line_items,
    invoice_lines,
    invoice_payment,
    invoice_payment_ids,
    invoice_period,
    invoice_subscription_id,
    line_items_from_stripe,
    metadata,
    obj,
    objects,
    payment_intent_charge_id,
    subscription_id,
    subscription_items,
    subscription_paused,
    subscription_period,
    subscription_previous,
    synthetic_id,
    text,
)
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
    PaymentFailed,
    PaymentSucceeded,
    SubscriptionObserved,
)

__all__ = ["FACT_READERS", "facts_from_event", "line_items_from_stripe"]

Event = dict[str, Any]
FactReader = Callable[[Event], list[Fact]]

# A status Stripe did not send (only in damaged payloads); rules treat it like any status they
# do not know, i.e. as granting nothing.
UNKNOWN_STATUS = "unknown"


def facts_from_event(event: Event) -> list[Fact]:
    """The facts a parsed Stripe event states; [] for types not acted on. Never raises."""
    if not isinstance(event, dict) or not text(event.get("id")):
        return []
    reader = FACT_READERS.get(text(event.get("type")) or "")
    return reader(event) if reader else []


# --- Envelope -----------------------------------------------------------------------------------


def _stamp(event: Event) -> tuple[str, int]:
    """`event_id` and `at` (Stripe's clock; 0 when the payload has no `created`)."""
    return text(event.get("id")) or "", integer(event.get("created")) or 0


def _object(event: Event) -> dict[str, Any]:
    return obj(dig(event, "data", "object"))


# --- Subscriptions ------------------------------------------------------------------------------


def customer_subscription_changed(
    event: Event, deleted: bool = False, creation: bool = False
) -> list[Fact]:
    """created / updated / paused / resumed / trial_will_end: a snapshot of the subscription.

    Which of two snapshots of the same second came first is told by what the event is (a
    creation comes before any update) and by the update's `previous_attributes`."""
    sub = _object(event)
    sub_id = subscription_id(sub)
    if sub_id is None:
        return []
    items = subscription_items(sub)
    period_start, period_end = subscription_period(sub, items)
    status = text(sub.get("status")) or ("canceled" if deleted else UNKNOWN_STATUS)
    event_id, at = _stamp(event)
    fact = SubscriptionObserved(
        event_id=event_id,
        at=at,
        subscription_id=sub_id,
        customer_id=id_of(sub.get("customer")),
        status=status,
        items=items,
        current_period_start=period_start,
        current_period_end=period_end,
        cancel_at_period_end=sub.get("cancel_at_period_end") is True,
        cancel_at=integer(sub.get("cancel_at")),
        canceled_at=integer(sub.get("canceled_at")),
        ended_at=integer(sub.get("ended_at")),
        trial_end=integer(sub.get("trial_end")),
        cancellation_reason=text(dig(sub, "cancellation_details", "reason")),
        paused=subscription_paused(sub),
        deleted=deleted,
        customid=metadata(sub, "customid"),
        creation=creation,
        previous=subscription_previous(dig(event, "data", "previous_attributes")),
    )
    return [fact]


def customer_subscription_created(event: Event) -> list[Fact]:
    return customer_subscription_changed(event, creation=True)


def customer_subscription_deleted(event: Event) -> list[Fact]:
    return customer_subscription_changed(event, deleted=True)


# --- Invoices -----------------------------------------------------------------------------------


def invoice_paid_or_updated(event: Event, payment_failed: bool = False) -> list[Fact]:
    """invoice.paid / payment_succeeded / updated: where the invoice's payment stands."""
    inv = _object(event)
    invoice_id = id_of(inv.get("id"))
    if invoice_id is None:
        return []
    lines = invoice_lines(inv)  # read once: items, subscription and period all come from them
    period_start, period_end = invoice_period(inv, lines)
    charge_id, payment_intent_id = invoice_payment(inv)
    event_id, at = _stamp(event)
    fact = InvoiceObserved(
        event_id=event_id,
        at=at,
        invoice_id=invoice_id,
        customer_id=id_of(inv.get("customer")),
        subscription_id=invoice_subscription_id(inv, lines),
        status=text(inv.get("status")),
        paid=invoice_is_paid(inv),
        payment_failed=payment_failed,
        lines=invoice_line_items(lines),
        period_start=period_start,
        period_end=period_end,
        billing_reason=text(inv.get("billing_reason")),
        amount_paid=integer(inv.get("amount_paid")),
        charge_id=charge_id,
        payment_intent_id=payment_intent_id,
        customid=invoice_customid(inv),
    )
    return [fact]


def invoice_payment_failed(event: Event) -> list[Fact]:
    return invoice_paid_or_updated(event, payment_failed=True)


def invoice_payment_paid(event: Event) -> list[Fact]:
    """invoice_payment.paid: the link between an invoice and the payment that paid it, the
    only one from basil on (refunds and disputes name the charge and payment intent)."""
    payment = _object(event)
    payment_id = id_of(payment.get("id"))
    if payment_id is None:
        return []
    intent_id, charge_id = invoice_payment_ids(payment)
    parent = dig(payment, "parent", "subscription_details")
    event_id, at = _stamp(event)
    fact = InvoicePaymentObserved(
        event_id=event_id,
        at=at,
        invoice_payment_id=payment_id,
        invoice_id=id_of(payment.get("invoice")),
        subscription_id=id_of(dig(parent, "subscription")),
        payment_intent_id=intent_id,
        charge_id=charge_id,
        amount_paid=integer(payment.get("amount_paid")),
        paid=payment.get("status") == "paid",
        customid=metadata(parent, "customid"),
    )
    return [fact]


# --- Payments -----------------------------------------------------------------------------------


def payment_intent_succeeded(event: Event, partially_funded: bool = False) -> list[Fact]:
    intent = _object(event)
    intent_id = id_of(intent.get("id"))
    if intent_id is None:
        return []
    event_id, at = _stamp(event)
    fact = PaymentSucceeded(
        event_id=event_id,
        at=at,
        payment_intent_id=intent_id,
        charge_id=payment_intent_charge_id(intent),
        customer_id=id_of(intent.get("customer")),
        amount=integer(intent.get("amount")),
        invoice_id=id_of(intent.get("invoice")),  # removed at basil
        partially_funded=partially_funded,
        sku_id=metadata(intent, "sku"),
        product_id=metadata(intent, "product"),
        customid=metadata(intent, "customid"),
    )
    return [fact]


def payment_intent_partially_funded(event: Event) -> list[Fact]:
    """A bank transfer paid part of the amount: recorded, but not (yet) a full payment."""
    return payment_intent_succeeded(event, partially_funded=True)


def charge_succeeded(event: Event) -> list[Fact]:
    charge = _object(event)
    charge_id = id_of(charge.get("id"))
    if charge_id is None:
        return []
    event_id, at = _stamp(event)
    fact = PaymentSucceeded(
        event_id=event_id,
        at=at,
        payment_intent_id=id_of(charge.get("payment_intent")),
        charge_id=charge_id,
        customer_id=id_of(charge.get("customer")),
        amount=integer(charge.get("amount")),
        invoice_id=id_of(charge.get("invoice")),  # removed at basil
        sku_id=metadata(charge, "sku"),
        product_id=metadata(charge, "product"),
        customid=metadata(charge, "customid"),
    )
    return [fact]


def charge_failed(event: Event) -> list[Fact]:
    charge = _object(event)
    charge_id = id_of(charge.get("id"))
    if charge_id is None:
        return []
    event_id, at = _stamp(event)
    fact = PaymentFailed(
        event_id=event_id,
        at=at,
        payment_intent_id=id_of(charge.get("payment_intent")),
        charge_id=charge_id,
        customer_id=id_of(charge.get("customer")),
        invoice_id=id_of(charge.get("invoice")),
    )
    return [fact]


# --- Refunds and disputes -----------------------------------------------------------------------


def charge_refunded(event: Event) -> list[Fact]:
    """Full when Stripe says `refunded`, or the cumulative `amount_refunded` reaches `amount`."""
    charge = _object(event)
    charge_id = id_of(charge.get("id"))
    if charge_id is None:
        return []
    amount = integer(charge.get("amount"))
    refunded = amount_refunded(charge)
    full = charge.get("refunded") is True or (amount is not None and 0 < amount <= refunded)
    event_id, at = _stamp(event)
    fact = ChargeRefunded(
        event_id=event_id,
        at=at,
        charge_id=charge_id,
        payment_intent_id=id_of(charge.get("payment_intent")),
        customer_id=id_of(charge.get("customer")),
        amount=amount,
        amount_refunded=refunded,
        full=full,
        invoice_id=id_of(charge.get("invoice")),
    )
    return [fact]


def credit_note_created(event: Event) -> list[Fact]:
    """Money given back against an invoice: a refund, or a credit issued after it was paid
    (`credit_note_gives_back`). Whether that is the whole amount paid is for the rules to say,
    from the invoice's `amount_paid` (the note names its invoice by id; an expanded invoice's
    `amount_paid` is read too). Its charge is known only if a refund came expanded."""
    note = _object(event)
    note_id = id_of(note.get("id"))
    if note_id is None or not credit_note_gives_back(note):
        return []
    refunds = credit_note_refunds(note)
    event_id, at = _stamp(event)
    fact = CreditNoteIssued(
        event_id=event_id,
        at=at,
        credit_note_id=note_id,
        invoice_id=id_of(note.get("invoice")),
        customer_id=id_of(note.get("customer")),
        amount=integer(note.get("amount")) or 0,
        charge_id=first(id_of(dig(refund, "charge")) for refund in refunds),
        payment_intent_id=first(id_of(dig(refund, "payment_intent")) for refund in refunds),
        invoice_amount_paid=integer(dig(note, "invoice", "amount_paid")),
    )
    return [fact]


def charge_dispute_changed(event: Event) -> list[Fact]:
    """created / updated / closed / funds_withdrawn / funds_reinstated: the dispute's state."""
    dispute = _object(event)
    charge = dispute.get("charge")
    charge_id = id_of(charge)
    # Old test payloads have no dispute id; a charge has at most one dispute, so it names it.
    dispute_id = id_of(dispute.get("id")) or synthetic_id("dispute", charge_id)
    if dispute_id is None:
        return []
    status = text(dispute.get("status")) or UNKNOWN_STATUS
    event_id, at = _stamp(event)
    fact = DisputeObserved(
        event_id=event_id,
        at=at,
        dispute_id=dispute_id,
        charge_id=charge_id,
        payment_intent_id=id_of(dispute.get("payment_intent"))
        or id_of(dig(charge, "payment_intent")),
        status=status,
        lost=status == "lost",
    )
    return [fact]


# --- Checkout and customers ---------------------------------------------------------------------


def checkout_session_completed(event: Event) -> list[Fact]:
    session = _object(event)
    session_id = id_of(session.get("id"))
    if session_id is None:
        return []
    event_id, at = _stamp(event)
    fact = CheckoutCompleted(
        event_id=event_id,
        at=at,
        session_id=session_id,
        mode=text(session.get("mode"))
        or ("subscription" if id_of(session.get("subscription")) else "payment"),
        # no_payment_required: a free or fully discounted session (or setup mode) grants as paid.
        paid=session.get("payment_status") in ("paid", "no_payment_required"),
        customer_id=id_of(session.get("customer")),
        subscription_id=id_of(session.get("subscription")),
        payment_intent_id=id_of(session.get("payment_intent")),
        invoice_id=id_of(session.get("invoice")),
        client_reference_id=text(session.get("client_reference_id")),
        customid=metadata(session, "customid"),
        lines=_checkout_lines(session),
        sku_id=metadata(session, "sku"),
        amount_total=integer(session.get("amount_total")),
    )
    return [fact]


def _checkout_lines(session: dict[str, Any]) -> tuple[LineItem, ...] | None:
    """What a session sold, when the payload says: expanded `line_items` (webhooks never expand
    them; a page with `has_more` is incomplete, so unknown), pre-2020 `display_items`, or
    `metadata.product`. None = unknown until the line items are fetched from the API."""
    listed = session.get("line_items")
    complete = dig(listed, "has_more") is not True
    lines = (line_items_from_stripe(objects(listed)) if complete else ()) or display_items(session)
    if lines:
        return lines
    product_id = metadata(session, "product")
    return (LineItem(product_id=product_id),) if product_id else None


def customer_changed(event: Event, deleted: bool = False) -> list[Fact]:
    cust = _object(event)
    customer_id = id_of(cust.get("id"))
    if customer_id is None:
        return []
    event_id, at = _stamp(event)
    fact = CustomerObserved(
        event_id=event_id,
        at=at,
        customer_id=customer_id,
        customid=metadata(cust, "customid"),
        deleted=deleted or cust.get("deleted") is True,
    )
    return [fact]


def customer_deleted(event: Event) -> list[Fact]:
    return customer_changed(event, deleted=True)


FACT_READERS: dict[str, FactReader] = {
    "checkout.session.completed": checkout_session_completed,
    "payment_intent.succeeded": payment_intent_succeeded,
    "payment_intent.partially_funded": payment_intent_partially_funded,
    "customer.subscription.created": customer_subscription_created,
    "customer.subscription.updated": customer_subscription_changed,
    "customer.subscription.deleted": customer_subscription_deleted,
    "customer.subscription.paused": customer_subscription_changed,
    "customer.subscription.resumed": customer_subscription_changed,
    "customer.subscription.trial_will_end": customer_subscription_changed,
    "invoice.paid": invoice_paid_or_updated,
    "invoice.payment_succeeded": invoice_paid_or_updated,
    "invoice.updated": invoice_paid_or_updated,
    "invoice.payment_failed": invoice_payment_failed,
    "invoice_payment.paid": invoice_payment_paid,
    "charge.succeeded": charge_succeeded,
    "charge.failed": charge_failed,
    "charge.refunded": charge_refunded,
    "charge.dispute.created": charge_dispute_changed,
    "charge.dispute.updated": charge_dispute_changed,
    "charge.dispute.closed": charge_dispute_changed,
    "charge.dispute.funds_withdrawn": charge_dispute_changed,
    "charge.dispute.funds_reinstated": charge_dispute_changed,
    "customer.created": customer_changed,
    "customer.updated": customer_changed,
    "customer.deleted": customer_deleted,
    "credit_note.created": credit_note_created,
}
