"""Event-sourced aggregates: a buyer's history, webhook receipts, an app's catalogue.

Every class and event has an explicit `TOPIC`, so that stored events keep reading after a module is
moved or renamed (topics are storage identity: never change one).

A `Buyer` is one Stripe customer of one app (or, for a payment made without a Stripe customer, the
payment or custom id that identifies the buyer). Its history is an append-only list of the Stripe
events that concern it, each kept with its raw body exactly as received, plus the links between it
and the app's user ids (customid). The aggregate itself holds almost no state: its invariants are
enforced by the event store (unique versions, unique webhook receipts), so appending never needs
to replay a long history (see `adapters/ingest.py`).
"""

from __future__ import annotations

from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event


def buyer_id(app_id: str, buyer_key: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/apps/{app_id}/buyers/{buyer_key}")


def receipt_id(app_id: str, stripe_event_id: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/apps/{app_id}/stripe-events/{stripe_event_id}")


def catalogue_id(app_id: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/apps/{app_id}/catalogue")


class Buyer(Aggregate):
    """The history of one buyer of one app: Stripe events and customid links."""

    TOPIC = "entitlements.buyer"

    class Event(Aggregate.Event):
        pass

    class Created(Event, Aggregate.Created):
        TOPIC = "entitlements.buyer.registered"
        app_id: str
        buyer_key: str  # "cus_..." or "customid:...", "payment:pi_...", "checkout:cs_..."

    def __init__(self, app_id: str, buyer_key: str) -> None:
        self.app_id = app_id
        self.buyer_key = buyer_key

    @staticmethod
    def create_id(app_id: str, buyer_key: str) -> UUID:
        return buyer_id(app_id, buyer_key)

    class StripeEventRecorded(Event):
        """A Stripe event about this buyer, kept exactly as received."""

        TOPIC = "entitlements.buyer.stripe_event_recorded"
        stripe_event_id: str
        stripe_type: str
        api_version: str | None
        stripe_created: int
        received_at: float  # epoch seconds, our clock
        raw: str  # the request body exactly as Stripe sent it (text, never a dict)
        # How it reached us: "webhook", "backfill" (Stripe's events API) or "replay" (a file).
        # None: recorded before sources were kept (a webhook, or a backfill of then).
        source: str | None = None

    # Typed events: what happened, in the user's words. They carry the same fields; the type
    # says which kind of fact the Stripe event is (chosen by `adapters/stripe/envelope.py`).
    class SubscriptionChanged(StripeEventRecorded):
        TOPIC = "entitlements.buyer.subscription_changed"

    class InvoicePaid(StripeEventRecorded):
        TOPIC = "entitlements.buyer.invoice_paid"

    class InvoiceUpdated(StripeEventRecorded):
        TOPIC = "entitlements.buyer.invoice_updated"

    class InvoicePaymentFailed(StripeEventRecorded):
        TOPIC = "entitlements.buyer.invoice_payment_failed"

    class InvoicePaymentPaid(StripeEventRecorded):
        """invoice_payment.paid: which payment paid an invoice (basil and later)."""

        TOPIC = "entitlements.buyer.invoice_payment_paid"

    class PaymentSucceeded(StripeEventRecorded):
        TOPIC = "entitlements.buyer.payment_succeeded"

    class PaymentFailed(StripeEventRecorded):
        TOPIC = "entitlements.buyer.payment_failed"

    class ChargeRefunded(StripeEventRecorded):
        TOPIC = "entitlements.buyer.charge_refunded"

    class DisputeChanged(StripeEventRecorded):
        TOPIC = "entitlements.buyer.dispute_changed"

    class CheckoutCompleted(StripeEventRecorded):
        TOPIC = "entitlements.buyer.checkout_completed"

    class CustomerChanged(StripeEventRecorded):
        TOPIC = "entitlements.buyer.customer_changed"

    class CreditNoteIssued(StripeEventRecorded):
        TOPIC = "entitlements.buyer.credit_note_issued"

    class OtherStripeEvent(StripeEventRecorded):
        """A Stripe event type the engine does not act on: recorded, never rejected."""

        TOPIC = "entitlements.buyer.other_stripe_event"

    class CustomidLinked(Event):
        """The buyer was linked to an app user id (`connect_stripe`); a relink is a transfer."""

        TOPIC = "entitlements.buyer.customid_linked"
        customid: str
        previous_customid: str | None
        source: str  # "connect_stripe", ...

    class LineItemsResolved(Event):
        """The products of a Checkout Session, fetched from Stripe's API after the fact."""

        TOPIC = "entitlements.buyer.line_items_resolved"
        session_id: str
        line_items: str  # JSON text of Stripe's line item objects, as fetched

    class LineItemsUnresolvable(Event):
        """Stripe refused a Checkout Session's line items for good (404, 401, 403): the
        resolver stops asking until told to retry (`resolve-checkouts --retry-failed`)."""

        TOPIC = "entitlements.buyer.line_items_unresolvable"
        session_id: str
        status: int | None  # Stripe's HTTP status
        reason: str  # Stripe's message, as the resolver received it

    class StripeObjectObserved(Event):
        """A Stripe object as read from Stripe's API (import, reconcile), not from a webhook.

        The rules read it as a snapshot of the object at the instant it was read: a newer
        snapshot (a later webhook or observation) still wins, whatever order they arrive in."""

        TOPIC = "entitlements.buyer.stripe_object_observed"
        object_type: str  # Stripe's `object`: subscription, invoice, charge, ...
        object_id: str
        observed_at: float  # epoch seconds, our clock, when Stripe answered
        command: str  # which command read it: import | reconcile
        raw: str  # the object's JSON exactly as fetched (text, never a dict)


class WebhookReceipt(Aggregate):
    """Proof that a Stripe event id was recorded for an app: saved with the buyer's event, in
    the same transaction, so a redelivery fails as a whole and writes nothing."""

    TOPIC = "entitlements.webhook_receipt"

    class Event(Aggregate.Event):
        pass

    class Created(Event, Aggregate.Created):
        TOPIC = "entitlements.webhook_receipt.received"
        app_id: str
        stripe_event_id: str
        buyer_key: str

    def __init__(self, app_id: str, stripe_event_id: str, buyer_key: str) -> None:
        self.app_id = app_id
        self.stripe_event_id = stripe_event_id
        self.buyer_key = buyer_key

    @staticmethod
    def create_id(app_id: str, stripe_event_id: str) -> UUID:
        return receipt_id(app_id, stripe_event_id)

    @classmethod
    def received(cls, app_id: str, stripe_event_id: str, buyer_key: str) -> WebhookReceipt.Created:
        """The receipt's one event, built without the aggregate (nothing ever loads a receipt;
        building one through the library costs as much as the rest of recording a webhook)."""
        return cls.Created(
            originator_id=receipt_id(app_id, stripe_event_id),
            originator_version=cls.INITIAL_VERSION,
            timestamp=cls.Created.create_timestamp(),
            originator_topic=cls.TOPIC,
            app_id=app_id,
            stripe_event_id=stripe_event_id,
            buyer_key=buyer_key,
        )


class AppCatalogue(Aggregate):
    """An app's catalogue of SKUs and permissions; every replacement is on record."""

    TOPIC = "entitlements.app_catalogue"

    class Event(Aggregate.Event):
        pass

    class Created(Event, Aggregate.Created):
        TOPIC = "entitlements.app_catalogue.created"
        app_id: str

    class Replaced(Event):
        TOPIC = "entitlements.app_catalogue.replaced"
        catalogue: str  # JSON text of `Catalogue.to_json()`

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id
        self.catalogue = '{"skus": [], "permissions": []}'

    @staticmethod
    def create_id(app_id: str) -> UUID:
        return catalogue_id(app_id)

    @event(Replaced)
    def replace(self, catalogue: str) -> None:
        self.catalogue = catalogue


def sync_id(app_id: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/apps/{app_id}/stripe-sync")


class AppSync(Aggregate):
    """What an app's reads of Stripe as a second source did: every backfill, import and
    reconcile run, on record in the log (durable, seen by every host; `GET /v1/sync`)."""

    TOPIC = "entitlements.app_sync"

    class Event(Aggregate.Event):
        pass

    class Created(Event, Aggregate.Created):
        TOPIC = "entitlements.app_sync.created"
        app_id: str

    class Ran(Event):
        TOPIC = "entitlements.app_sync.ran"
        command: str  # backfill | import | reconcile
        started_at: float  # epoch seconds, our clock
        finished_at: float
        failed: bool  # Stripe could not be read to the end (`error` says why)
        error: str  # "" when it did not fail
        counts: str  # JSON object of the run's counts (its summary line's)
        differences: str  # JSON array: reconcile's differences found (the first ones)

    def __init__(self, app_id: str) -> None:
        self.app_id = app_id

    @staticmethod
    def create_id(app_id: str) -> UUID:
        return sync_id(app_id)
