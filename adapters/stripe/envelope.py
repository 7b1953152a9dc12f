"""The envelope of a Stripe event: what it is, and whose history it belongs to.

This reads only the few fields every API version shares (`id`, `type`, `api_version`, `created`,
`data.object`) plus the ids that name the buyer. Everything else about payload shapes lives in
`adapters/stripe/facts.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapters.stripe.fields import id_of, invoice_payment_ids, metadata
from adapters.stripe.sanity import INT64, UnstorableJson, load_json
from domain.aggregates import Buyer

MAX_ID_LENGTH = 255


class NotAStripeEvent(ValueError):
    """The body is JSON but not a Stripe event; the message says what is missing."""


@dataclass(frozen=True)
class StripeEnvelope:
    event_id: str
    type: str
    api_version: str | None
    created: int
    buyer_key: str  # which buyer's history the event goes to (see `buyer_key_of`)
    event_class: type[Buyer.StripeEventRecorded]


# Which typed domain event each Stripe event type becomes. Types not listed are recorded as
# `OtherStripeEvent`: never rejected, and a later rule change can still act on them.
EVENT_CLASSES: dict[str, type[Buyer.StripeEventRecorded]] = {
    "customer.subscription.created": Buyer.SubscriptionChanged,
    "customer.subscription.updated": Buyer.SubscriptionChanged,
    "customer.subscription.deleted": Buyer.SubscriptionChanged,
    "customer.subscription.paused": Buyer.SubscriptionChanged,
    "customer.subscription.resumed": Buyer.SubscriptionChanged,
    "customer.subscription.trial_will_end": Buyer.SubscriptionChanged,
    "invoice.paid": Buyer.InvoicePaid,
    "invoice.payment_succeeded": Buyer.InvoicePaid,
    "invoice.updated": Buyer.InvoiceUpdated,
    "invoice.payment_failed": Buyer.InvoicePaymentFailed,
    "invoice_payment.paid": Buyer.InvoicePaymentPaid,
    "payment_intent.succeeded": Buyer.PaymentSucceeded,
    "payment_intent.partially_funded": Buyer.PaymentSucceeded,
    "charge.succeeded": Buyer.PaymentSucceeded,
    "charge.failed": Buyer.PaymentFailed,
    "charge.refunded": Buyer.ChargeRefunded,
    "charge.dispute.created": Buyer.DisputeChanged,
    "charge.dispute.updated": Buyer.DisputeChanged,
    "charge.dispute.closed": Buyer.DisputeChanged,
    "charge.dispute.funds_withdrawn": Buyer.DisputeChanged,
    "charge.dispute.funds_reinstated": Buyer.DisputeChanged,
    "checkout.session.completed": Buyer.CheckoutCompleted,
    "customer.created": Buyer.CustomerChanged,
    "customer.updated": Buyer.CustomerChanged,
    "customer.deleted": Buyer.CustomerChanged,
    "credit_note.created": Buyer.CreditNoteIssued,
}


def parse_event(raw: str) -> tuple[StripeEnvelope, dict[str, Any]]:
    """Parse and check a webhook body. Raises `json.JSONDecodeError` or `NotAStripeEvent`."""
    try:
        event = load_json(raw)  # also refuses what storage could not hold (see sanity.py)
    except UnstorableJson as error:
        raise NotAStripeEvent(str(error)) from error
    return read_envelope(event), event


def read_envelope(event: Any) -> StripeEnvelope:
    if not isinstance(event, dict):
        raise NotAStripeEvent("a Stripe event is a JSON object")
    event_id = _required_id(event, "id")
    event_type = _required_id(event, "type")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise NotAStripeEvent("'data.object' must be an object")
    created = event.get("created")
    if created is not None and (not isinstance(created, int) or isinstance(created, bool)):
        raise NotAStripeEvent("'created' must be an integer (epoch seconds)")
    if created is not None and not -INT64 <= created < INT64:
        raise NotAStripeEvent("'created' does not fit in 64 bits")
    api_version = event.get("api_version")
    if api_version is not None and not isinstance(api_version, str):
        raise NotAStripeEvent("'api_version' must be a string")
    return StripeEnvelope(
        event_id=event_id,
        type=event_type,
        api_version=api_version,
        created=created or 0,
        buyer_key=buyer_key_of(data["object"]),
        event_class=EVENT_CLASSES.get(event_type, Buyer.OtherStripeEvent),
    )


def _required_id(event: dict[str, Any], key: str) -> str:
    value = event.get(key)
    if not isinstance(value, str) or not value.strip():
        raise NotAStripeEvent(f"'{key}' must be a non-empty string")
    if len(value) > MAX_ID_LENGTH:
        raise NotAStripeEvent(f"'{key}' is longer than {MAX_ID_LENGTH} characters")
    return value


def buyer_key_of(obj: dict[str, Any]) -> str:
    """Whose history an event belongs to.

    The Stripe customer when the object names one; otherwise what identifies the buyer: the app's
    user id (`metadata.customid`), the Checkout Session's `client_reference_id`, or the payment
    itself (so that a guest payment, its charge, refund and dispute share one history).
    """
    is_customer = obj.get("object") == "customer"
    customer = id_of(obj.get("id")) if is_customer else id_of(obj.get("customer"))
    if customer:
        return customer
    customid = metadata(obj, "customid")
    if isinstance(customid, str) and customid:
        return f"customid:{customid}"
    reference = obj.get("client_reference_id")
    if isinstance(reference, str) and reference:
        return f"customid:{reference}"
    if obj.get("object") == "invoice_payment":
        # No customer: it joins the history of the payment it names, like that payment's
        # refunds and disputes, where a customer's history naming the payment finds it.
        intent, charge = invoice_payment_ids(obj)
        if intent or charge:
            return f"payment:{intent or charge}"
    payment = id_of(obj.get("payment_intent")) or (
        id_of(obj.get("id")) if obj.get("object") == "payment_intent" else None
    )
    if payment:
        return f"payment:{payment}"
    charge = id_of(obj.get("charge")) or (
        id_of(obj.get("id")) if obj.get("object") == "charge" else None
    )
    if charge:
        return f"payment:{charge}"
    kind = obj.get("object") if isinstance(obj.get("object"), str) else "object"
    return f"{kind}:{id_of(obj.get('id')) or 'unknown'}"
