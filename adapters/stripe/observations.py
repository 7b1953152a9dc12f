"""Stripe objects read from the API -> the same facts a webhook about them states.

An observation is a snapshot of one object at the instant it was read. It is read here as the
event a webhook would have carried for the object's current state (`OBSERVED_AS`), stamped with
the read instant instead of an event's `created`, so the rules compare it with webhook snapshots
by Stripe's clock as usual: a newer snapshot wins, whichever arrived first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adapters.stripe.facts import facts_from_event
from adapters.stripe.fields import integer, text
from domain.facts import Fact

Obj = dict[str, Any]


def _customer(obj: Obj) -> list[str]:
    return ["customer.deleted" if obj.get("deleted") is True else "customer.updated"]


def _subscription(obj: Obj) -> list[str]:
    # A canceled subscription is what a deletion event carries; any other status an update.
    if obj.get("status") == "canceled":
        return ["customer.subscription.deleted"]
    return ["customer.subscription.updated"]


def _invoice(obj: Obj) -> list[str]:
    return ["invoice.paid" if obj.get("status") == "paid" else "invoice.updated"]


def _payment_intent(obj: Obj) -> list[str]:
    return ["payment_intent.succeeded"] if obj.get("status") == "succeeded" else []


def _charge(obj: Obj) -> list[str]:
    """A charge says whether it was paid and how much of it was refunded since."""
    if obj.get("status") == "failed":
        return ["charge.failed"]
    types = ["charge.succeeded"] if obj.get("status") == "succeeded" else []
    if obj.get("refunded") is True or (integer(obj.get("amount_refunded")) or 0) > 0:
        types.append("charge.refunded")
    return types


def _checkout_session(obj: Obj) -> list[str]:
    return ["checkout.session.completed"] if obj.get("status") == "complete" else []


# Object type -> the event types whose readers state its facts. Refunds are observed (on
# record) but state nothing of their own: their charge's `amount_refunded` says it all.
OBSERVED_AS: dict[str, Callable[[Obj], list[str]]] = {
    "customer": _customer,
    "subscription": _subscription,
    "invoice": _invoice,
    "payment_intent": _payment_intent,
    "charge": _charge,
    "dispute": lambda obj: ["charge.dispute.updated"],
    "credit_note": lambda obj: ["credit_note.created"],
    "checkout.session": _checkout_session,
}


def observation_id(object_id: str, observed_at: float) -> str:
    """What facts of an observation name as their event: the object and the read instant."""
    return f"observed:{object_id}@{observed_at:.3f}"


def facts_from_observation(obj: Any, observed_at: float) -> list[Fact]:
    """The facts an object read at `observed_at` states; [] when it states none. Never raises."""
    if not isinstance(obj, dict):
        return []
    object_id = text(obj.get("id"))
    to_types = OBSERVED_AS.get(text(obj.get("object")) or "")
    if object_id is None or to_types is None:
        return []
    event_id = observation_id(object_id, observed_at)
    facts: list[Fact] = []
    for event_type in to_types(obj):
        event = {"id": event_id, "type": event_type, "created": int(observed_at),
                 "data": {"object": obj}}  # fmt: skip
        facts += facts_from_event(event)
    return facts
