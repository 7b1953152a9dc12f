"""Version-neutral facts read from Stripe events.

The Stripe adapter (`adapters/stripe/facts.py`) turns each recorded Stripe event, whatever its API
version, into zero or more of these facts. The entitlement rules (`domain/rules.py`) only ever see
facts, never raw Stripe JSON. Every fact carries the Stripe event it came from (`event_id`) and
Stripe's clock for it (`at`, the event's `created`, epoch seconds), so that rules can ignore older
snapshots of an object whatever order events were delivered in.

Facts are plain frozen dataclasses of JSON-friendly values (str, int, bool, None, tuples of those
or of nested facts) so that projections can store them as JSON and read them back unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class Fact:
    kind: ClassVar[str] = "fact"
    event_id: str
    at: int  # Stripe's `created` of the event, epoch seconds

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what `dataclasses.asdict` gives, without its deep copies (a hot path of
        projecting and rebuilding). Only line items nest; every other value is a scalar."""
        out: dict[str, Any] = {"kind": self.kind}
        for name in _FIELD_ORDER[self.kind]:
            value = getattr(self, name)
            if name in _NESTED_LINE_FIELDS and value is not None:
                value = tuple(vars(line).copy() for line in value)
            out[name] = value
        return out


@dataclass(frozen=True)
class LineItem:
    """One thing bought: a subscription item, an invoice line or a checkout line."""

    product_id: str | None
    price_id: str | None = None
    item_id: str | None = None  # subscription item id, when known
    quantity: int = 1
    period_start: int | None = None  # item-level period (basil and later)
    period_end: int | None = None


@dataclass(frozen=True)
class SubscriptionObserved(Fact):
    """A snapshot of a Subscription (customer.subscription.* events)."""

    kind: ClassVar[str] = "subscription"
    subscription_id: str
    customer_id: str | None
    status: str  # Stripe's: trialing, active, past_due, unpaid, incomplete, ...
    items: tuple[LineItem, ...]
    current_period_start: int | None
    current_period_end: int | None  # from items at basil+ (latest item end), else top level
    cancel_at_period_end: bool = False
    cancel_at: int | None = None
    canceled_at: int | None = None
    ended_at: int | None = None
    trial_end: int | None = None
    # cancellation_details.reason: cancellation_requested | payment_failed | payment_disputed
    cancellation_reason: str | None = None
    paused: bool = False  # status paused, or pause_collection set
    deleted: bool = False  # from a customer.subscription.deleted event
    customid: str | None = None  # metadata.customid
    creation: bool = False  # from customer.subscription.created: before any update of it
    # What `previous_attributes` say the subscription was just before (an update's), as
    # (attribute, value) pairs in the vocabulary of `snapshot_attribute`: it tells which of two
    # snapshots of the same second came first. Empty when unknown.
    previous: tuple[tuple[str, str | int | bool | None], ...] = ()


# The attributes `SubscriptionObserved.previous` may name.
PREVIOUS_ATTRIBUTES = (
    "status",
    "cancel_at_period_end",
    "cancel_at",
    "canceled_at",
    "ended_at",
    "trial_end",
    "current_period_start",
    "current_period_end",
    "items",
)


def items_key(items: tuple[LineItem, ...]) -> str:
    """A subscription's items as one comparable value: its prices (else products), sorted."""
    return ",".join(sorted(f"{item.price_id or ''}/{item.product_id or ''}" for item in items))


def snapshot_attribute(snapshot: SubscriptionObserved, name: str) -> str | int | bool | None:
    """The value of one of `PREVIOUS_ATTRIBUTES` on a snapshot."""
    if name == "items":
        return items_key(snapshot.items)
    return getattr(snapshot, name)


@dataclass(frozen=True)
class InvoiceObserved(Fact):
    """An invoice's payment outcome (invoice.paid, payment_succeeded, updated, payment_failed)."""

    kind: ClassVar[str] = "invoice"
    invoice_id: str
    customer_id: str | None
    subscription_id: str | None
    status: str | None  # draft, open, paid, uncollectible, void
    paid: bool
    payment_failed: bool  # from invoice.payment_failed
    lines: tuple[LineItem, ...] = ()
    period_start: int | None = None  # earliest subscription line period start
    period_end: int | None = None
    billing_reason: str | None = None
    amount_paid: int | None = None
    charge_id: str | None = None
    payment_intent_id: str | None = None
    customid: str | None = None


@dataclass(frozen=True)
class InvoicePaymentObserved(Fact):
    """Which payment paid an invoice (invoice_payment.paid): from basil on, invoices name no
    charge or payment intent, and charges and payment intents name no invoice."""

    kind: ClassVar[str] = "invoice_payment"
    invoice_payment_id: str
    invoice_id: str | None
    subscription_id: str | None  # the invoice's, when the payload names it
    payment_intent_id: str | None
    charge_id: str | None
    amount_paid: int | None = None
    paid: bool = False  # status paid
    customid: str | None = None  # the subscription's metadata.customid, when named


@dataclass(frozen=True)
class PaymentSucceeded(Fact):
    """Money was received for a payment (payment_intent.succeeded, charge.succeeded)."""

    kind: ClassVar[str] = "payment"
    payment_intent_id: str | None
    charge_id: str | None
    customer_id: str | None
    amount: int | None
    invoice_id: str | None = None  # set when the payment pays an invoice (pre-basil payloads)
    partially_funded: bool = False  # payment_intent.partially_funded: not yet fully paid
    # One-time purchase hints from metadata (`metadata.sku` / `metadata.product`)
    sku_id: str | None = None
    product_id: str | None = None
    customid: str | None = None


@dataclass(frozen=True)
class PaymentFailed(Fact):
    """A charge failed (charge.failed)."""

    kind: ClassVar[str] = "payment_failed"
    payment_intent_id: str | None
    charge_id: str | None
    customer_id: str | None
    invoice_id: str | None = None


@dataclass(frozen=True)
class ChargeRefunded(Fact):
    """A charge was refunded, fully or partly (charge.refunded, credit_note.created with refund)."""

    kind: ClassVar[str] = "refund"
    charge_id: str | None
    payment_intent_id: str | None
    customer_id: str | None
    amount: int | None  # amount of the charge
    amount_refunded: int  # cumulative
    full: bool
    invoice_id: str | None = None


@dataclass(frozen=True)
class CreditNoteIssued(Fact):
    """Money given back against an invoice (credit_note.created): refunded to the card, or
    credited after the invoice was paid. Whether it gave back the whole amount paid is
    judged against the invoice's `amount_paid` (its own invoice.paid facts), by the rules."""

    kind: ClassVar[str] = "credit_note"
    credit_note_id: str
    invoice_id: str | None
    customer_id: str | None
    amount: int  # the credit note's total
    charge_id: str | None = None  # known when its refund came expanded
    payment_intent_id: str | None = None
    invoice_amount_paid: int | None = None  # known when its invoice came expanded


@dataclass(frozen=True)
class DisputeObserved(Fact):
    """A dispute on a charge (charge.dispute.created / closed / updated)."""

    kind: ClassVar[str] = "dispute"
    dispute_id: str
    charge_id: str | None
    payment_intent_id: str | None
    status: str  # warning_needs_response, needs_response, under_review, won, lost, ...
    lost: bool


@dataclass(frozen=True)
class CheckoutCompleted(Fact):
    """A Checkout Session completed (checkout.session.completed)."""

    kind: ClassVar[str] = "checkout"
    session_id: str
    mode: str  # payment | subscription | setup
    paid: bool  # payment_status in (paid, no_payment_required)
    customer_id: str | None
    subscription_id: str | None = None
    payment_intent_id: str | None = None
    invoice_id: str | None = None
    client_reference_id: str | None = None
    customid: str | None = None
    # Known products of a payment-mode session (from line_items or metadata); None = not yet known
    lines: tuple[LineItem, ...] | None = None
    sku_id: str | None = None  # metadata.sku
    amount_total: int | None = None


@dataclass(frozen=True)
class LineItemsUnresolvable(Fact):
    """Stripe refused the line items of a checkout for good (no such session, a key without
    the permission): recorded by the resolver, retried only when asked
    (`resolve-checkouts --retry-failed`). `event_id` names the domain event, not a Stripe one;
    `at` is when the resolver was refused (our clock)."""

    kind: ClassVar[str] = "line_items_unresolvable"
    session_id: str
    status: int | None  # Stripe's HTTP status
    reason: str  # Stripe's message


@dataclass(frozen=True)
class CustomerObserved(Fact):
    """A snapshot of a Customer (customer.created / updated / deleted)."""

    kind: ClassVar[str] = "customer"
    customer_id: str
    customid: str | None = None
    deleted: bool = False


FACT_TYPES: dict[str, type[Fact]] = {
    cls.kind: cls
    for cls in (
        SubscriptionObserved,
        InvoiceObserved,
        InvoicePaymentObserved,
        PaymentSucceeded,
        PaymentFailed,
        ChargeRefunded,
        CreditNoteIssued,
        DisputeObserved,
        CheckoutCompleted,
        LineItemsUnresolvable,
        CustomerObserved,
    )
}

_NESTED_LINE_FIELDS = {"items", "lines"}
_PAIR_FIELDS = {"previous"}  # tuples of pairs: JSON gives them back as lists of lists
# Each fact type's field names (`dataclasses.fields` is slow enough to show in query profiles).
_FIELD_NAMES: dict[str, tuple[type[Fact], frozenset[str], frozenset[str]]] = {
    kind: (
        cls,
        frozenset(f.name for f in fields(cls)),
        frozenset(_NESTED_LINE_FIELDS & {f.name for f in fields(cls)}),
    )
    for kind, cls in FACT_TYPES.items()
}


_PAIRS: dict[str, frozenset[str]] = {
    kind: names & _PAIR_FIELDS for kind, (_, names, _) in _FIELD_NAMES.items()
}

# The same names in declaration order, so that a fact's JSON text is the same in every process.
_FIELD_ORDER: dict[str, tuple[str, ...]] = {
    kind: tuple(f.name for f in fields(cls)) for kind, cls in FACT_TYPES.items()
}


def fact_from_dict(data: dict[str, Any]) -> Fact:
    """Rebuild a fact from `Fact.to_dict()` output (e.g. after a JSON round trip)."""
    cls, names, nested = _FIELD_NAMES[data["kind"]]
    kwargs = {k: v for k, v in data.items() if k in names}
    for name in nested:
        if kwargs.get(name) is not None:
            kwargs[name] = tuple(LineItem(**line) for line in kwargs[name])
    for name in _PAIRS[data["kind"]]:
        if name in kwargs:
            kwargs[name] = tuple(tuple(pair) for pair in kwargs[name])
    return cls(**kwargs)
