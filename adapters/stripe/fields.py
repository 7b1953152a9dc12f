"""Version-aware accessors for Stripe payload fields.

Stripe renders a webhook in the endpoint's API version, so one engine sees 2013 shapes next to
basil ones (see `../shared/notes/stripe.md` §2). Each accessor below reads one concept from every
known location, newest first, and never raises: a missing key, a `null`, or a value of the wrong
type (an id string where an expanded object was expected, or the reverse) reads as "unknown".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from domain.facts import LineItem, items_key

# Stripe ids never contain ':', so ids we have to make up for payloads that carry none
# (2013-era subscriptions, old dispute test payloads) can never collide with real ones.
SYNTHETIC_ID_PREFIX = "legacy:"


# --- Plain values -------------------------------------------------------------------------------


def obj(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one (so `.get` chains stay safe)."""
    return value if isinstance(value, dict) else {}


def dig(value: Any, *keys: str) -> Any:
    """`value[k1][k2]...`, or None as soon as a step is not an object."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def integer(value: Any) -> int | None:
    # bool is an int subclass in Python; `true` is never a Stripe amount or timestamp.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def id_of(value: Any) -> str | None:
    """An expandable field: Stripe sends either the id string or the expanded object."""
    if isinstance(value, dict):
        value = value.get("id")
    return text(value)


def objects(value: Any) -> list[dict[str, Any]]:
    """The objects of a Stripe list (`{"data": [...]}`) or of a plain array (pre-2014 shapes)."""
    if isinstance(value, dict):
        value = value.get("data")
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def metadata(value: Any, key: str) -> str | None:
    found = value.get("metadata") if isinstance(value, dict) else None
    return text(found.get(key)) if isinstance(found, dict) else None


def first(values: Iterable[Any]) -> Any:
    """The first value that is not None (the "newest location first" fallback chain)."""
    return next((value for value in values if value is not None), None)


def quantity(value: Any) -> int:
    # Invoice lines for one-off items may carry quantity null; one of a thing is the honest default.
    number = integer(value)
    return number if number is not None and number >= 0 else 1


def synthetic_id(kind: str, owner: str | None) -> str | None:
    return f"{SYNTHETIC_ID_PREFIX}{kind}:{owner}" if owner else None


# --- Prices and products ------------------------------------------------------------------------


def price_and_product(thing: dict[str, Any]) -> tuple[str | None, str | None]:
    """Price and product of a subscription item, invoice line or checkout line, any version.

    basil+ invoice lines: `pricing.price_details.{price, product}`; 2020-08-27+: `price`;
    older: `plan` (plans had no product before 2018, so product may stay None).
    """
    # One pass over the three price locations, newest first: the price is the first that names
    # one, the product the price details' own, else the first an expanded price names.
    details = dig(thing, "pricing", "price_details")
    if isinstance(details, dict):
        price_id, product_id = None, id_of(details.get("product"))
        priced: tuple[Any, ...] = (details.get("price"), thing.get("price"), thing.get("plan"))
    else:
        price_id = product_id = None
        priced = (thing.get("price"), thing.get("plan"))
    for price in priced:
        if price_id is None:
            price_id = id_of(price)
        if product_id is None and isinstance(price, dict):
            product_id = id_of(price.get("product"))
    return price_id, product_id


def line_item(
    thing: dict[str, Any],
    item_id: str | None = None,
    period: tuple[int | None, int | None] = (None, None),
) -> LineItem | None:
    """A priced thing as a `LineItem`, or None when it names neither a price nor a product."""
    price_id, product_id = price_and_product(thing)
    if price_id is None and product_id is None:
        return None
    # Positional: the fields in declaration order (product, price, item, quantity, period).
    return LineItem(product_id, price_id, item_id, quantity(thing.get("quantity")), *period)


def line_items_from_stripe(line_items: list[dict[str, Any]]) -> tuple[LineItem, ...]:
    """Checkout line items (`GET /v1/checkout/sessions/{id}/line_items`, or an expanded
    `session.line_items.data`) as `LineItem`s; items without price or product are left out."""
    lines = (line_item(item) for item in objects(line_items))
    return tuple(line for line in lines if line is not None)


def display_items(session: dict[str, Any]) -> tuple[LineItem, ...]:
    """Checkout `display_items` (removed 2020-08-27): each names a `plan`, a `sku` or a `price`."""
    lines = []
    for item in objects(session.get("display_items")):
        # A SKU was the one-time counterpart of a plan: its id plays the price's role.
        line = line_item({**item, "plan": item.get("plan") or item.get("sku")})
        if line is not None:
            lines.append(line)
    return tuple(lines)


# --- Subscriptions ------------------------------------------------------------------------------


def subscription_id(sub: dict[str, Any]) -> str | None:
    """The subscription's id; 2013-era payloads have none.

    Then a customer had at most one subscription, so the customer names it. This stays stable
    across plan changes, which a plan-derived id would not.
    """
    return id_of(sub.get("id")) or synthetic_id("subscription", id_of(sub.get("customer")))


def subscription_items(sub: dict[str, Any]) -> tuple[LineItem, ...]:
    """Subscription items, any version. Before basil every item shared the subscription's
    period, so items without their own period get the top-level one; then a subscription reads
    the same whichever of the two shapes Stripe rendered it in."""
    top_start = integer(sub.get("current_period_start"))
    top_end = integer(sub.get("current_period_end"))
    items = objects(sub.get("items"))
    if not items:
        # 2013 shape: one `plan` and `quantity` on the subscription itself, no items list.
        legacy = line_item(sub, period=(top_start, top_end))
        return (legacy,) if legacy else ()
    lines = []
    for item in items:
        start = integer(item.get("current_period_start"))
        end = integer(item.get("current_period_end"))
        period = (top_start if start is None else start, top_end if end is None else end)
        line = line_item(item, item_id=id_of(item.get("id")), period=period)
        if line is not None:
            lines.append(line)
    return tuple(lines)


def subscription_period(
    sub: dict[str, Any], items: tuple[LineItem, ...]
) -> tuple[int | None, int | None]:
    """Earliest item start and latest item end (basil+ moved periods onto items; items can
    differ), else the subscription's own `current_period_start/_end`."""
    starts = [item.period_start for item in items if item.period_start is not None]
    ends = [item.period_end for item in items if item.period_end is not None]
    return (
        min(starts) if starts else integer(sub.get("current_period_start")),
        max(ends) if ends else integer(sub.get("current_period_end")),
    )


_PREVIOUS_INSTANTS = (
    "cancel_at",
    "canceled_at",
    "ended_at",
    "trial_end",
    "current_period_start",
    "current_period_end",
)


def subscription_previous(previous: Any) -> tuple[tuple[str, str | int | bool | None], ...]:
    """What an update's `previous_attributes` say the subscription was just before, in the
    vocabulary of `domain.facts.snapshot_attribute`; attributes of the wrong type are left out.

    Items: `items` (the whole previous list, with item-level periods from basil on), or a
    single-plan subscription's `plan` (2013-2018 shapes)."""
    if not isinstance(previous, dict):
        return ()
    pairs: dict[str, str | int | bool | None] = {}
    if text(previous.get("status")):
        pairs["status"] = previous["status"]
    if isinstance(previous.get("cancel_at_period_end"), bool):
        pairs["cancel_at_period_end"] = previous["cancel_at_period_end"]
    for name in _PREVIOUS_INSTANTS:
        if name in previous and (previous[name] is None or integer(previous[name]) is not None):
            pairs[name] = previous[name]
    if isinstance(previous.get("items"), dict):
        items = subscription_items({"items": previous["items"]})
        pairs["items"] = items_key(items)
        start, end = subscription_period({}, items)  # basil+: the previous item periods
        if start is not None:
            pairs.setdefault("current_period_start", start)
        if end is not None:
            pairs.setdefault("current_period_end", end)
    elif isinstance(previous.get("plan"), dict):
        plan = line_item({"plan": previous["plan"]})
        pairs["items"] = items_key((plan,) if plan else ())
    return tuple(sorted(pairs.items()))


def subscription_paused(sub: dict[str, Any]) -> bool:
    # Status `paused` (trial ended without payment method) or collection paused by the merchant.
    return sub.get("status") == "paused" or sub.get("pause_collection") is not None


# --- Invoices -----------------------------------------------------------------------------------


def _line_parent(line: dict[str, Any]) -> dict[str, Any]:
    """basil+: what an invoice line was billed for, `parent.<parent.type>`: a subscription item
    (`subscription_item_details`) or a one-off invoice item (`invoice_item_details`)."""
    parent = obj(line.get("parent"))
    kind = text(parent.get("type"))
    if kind:
        return obj(parent.get(kind))
    return obj(parent.get("subscription_item_details")) or obj(parent.get("invoice_item_details"))


class InvoiceLine(NamedTuple):
    """One invoice line, read once (its parent is looked up a single time)."""

    item: LineItem | None  # None when it names neither a price nor a product
    subscription_id: str | None
    period_start: int | None
    period_end: int | None


def invoice_line(line: dict[str, Any]) -> InvoiceLine:
    """basil+: subscription and item under the line's parent; 2018+: `subscription` and
    `subscription_item`; 2014-era lines of `type: subscription`: the line's own id is the
    subscription's."""
    parent = _line_parent(line)
    subscription = id_of(parent.get("subscription")) or id_of(line.get("subscription"))
    if subscription is None and line.get("type") == "subscription":
        subscription = id_of(line.get("id"))
    item_id = id_of(parent.get("subscription_item")) or id_of(line.get("subscription_item"))
    period = line.get("period")
    if isinstance(period, dict):
        start, end = integer(period.get("start")), integer(period.get("end"))
    else:
        start = end = None
    item = line_item(line, item_id=item_id, period=(start, end))
    return InvoiceLine(item, subscription, start, end)


def invoice_lines(invoice: dict[str, Any]) -> list[InvoiceLine]:
    return [invoice_line(line) for line in objects(invoice.get("lines"))]


def invoice_line_items(lines: list[InvoiceLine]) -> tuple[LineItem, ...]:
    return tuple(line.item for line in lines if line.item is not None)


def invoice_subscription_id(invoice: dict[str, Any], lines: list[InvoiceLine]) -> str | None:
    """basil+: `parent.subscription_details.subscription`; before: `subscription`; else the one
    subscription its lines name (2014-era invoices can name it only there)."""
    direct = id_of(dig(invoice, "parent", "subscription_details", "subscription")) or id_of(
        invoice.get("subscription")
    )
    if direct:
        return direct
    named = {line.subscription_id for line in lines}
    named.discard(None)
    return named.pop() if len(named) == 1 else None


def invoice_period(
    invoice: dict[str, Any], lines: list[InvoiceLine]
) -> tuple[int | None, int | None]:
    """Earliest start / latest end over the lines that belong to a subscription (all lines when
    none says), else the invoice's own `period_start/_end` (which, for a subscription's first
    invoice, is the creation instant, not the service period)."""
    subscribed = [line for line in lines if line.subscription_id] or lines
    starts = [line.period_start for line in subscribed if line.period_start is not None]
    ends = [line.period_end for line in subscribed if line.period_end is not None]
    return (
        min(starts) if starts else integer(invoice.get("period_start")),
        max(ends) if ends else integer(invoice.get("period_end")),
    )


def invoice_is_paid(invoice: dict[str, Any]) -> bool:
    # basil removed the `paid` boolean; `status` exists since 2018-11, `paid` before (both between).
    return invoice.get("status") == "paid" or invoice.get("paid") is True


def invoice_customid(invoice: dict[str, Any]) -> str | None:
    return (
        metadata(invoice, "customid")
        or metadata(invoice.get("subscription_details"), "customid")  # 2023-08 .. acacia
        or metadata(dig(invoice, "parent", "subscription_details"), "customid")  # basil+
    )


def invoice_payment(invoice: dict[str, Any]) -> tuple[str | None, str | None]:
    """(charge id, payment intent id). basil removed `charge`/`payment_intent`; its `payments`
    list (InvoicePayment objects, the first that names a payment) is read when present, which
    webhooks rarely include: `invoice_payment.paid` events say the same."""
    charge_id, intent_id = id_of(invoice.get("charge")), id_of(invoice.get("payment_intent"))
    for payment in objects(invoice.get("payments")):
        if charge_id is None and intent_id is None:
            intent_id, charge_id = invoice_payment_ids(payment)
    return charge_id, intent_id


def invoice_payment_ids(payment: dict[str, Any]) -> tuple[str | None, str | None]:
    """(payment intent id, charge id) of an InvoicePayment: `payment.payment_intent` /
    `payment.charge` (basil, clover), or top-level `payment_intent` / `charge` (newer
    previews). Stripe names the charge only when it has no payment intent."""
    details = payment.get("payment")
    intent = id_of(dig(details, "payment_intent")) or id_of(payment.get("payment_intent"))
    charge = id_of(dig(details, "charge")) or id_of(payment.get("charge"))
    return intent, charge


# --- Payments -----------------------------------------------------------------------------------


def payment_intent_charge_id(intent: dict[str, Any]) -> str | None:
    """`latest_charge`; 2022-11-15 removed the `charges` list older versions read from."""
    latest = id_of(intent.get("latest_charge"))
    if latest is not None:
        return latest
    charges = objects(intent.get("charges"))
    return id_of(charges[0].get("id")) if charges else None


def amount_refunded(charge: dict[str, Any]) -> int:
    """Cumulative refunded amount; `refunds` is only a fallback (not auto-expanded since
    2022-11-15)."""
    total = integer(charge.get("amount_refunded"))
    if total is not None:
        return total
    return sum(integer(refund.get("amount")) or 0 for refund in objects(charge.get("refunds")))


def credit_note_gives_back(note: dict[str, Any]) -> bool:
    """Money goes back to the customer: a refund, or a credit note issued after the invoice
    was paid (to the customer's balance or outside Stripe). A `pre_payment` note without a
    refund only lowers what an unpaid invoice asks."""
    return bool(credit_note_refunds(note)) or note.get("type") == "post_payment"


def credit_note_refunds(note: dict[str, Any]) -> list[Any]:
    """Refunds a credit note carries, each an id or an expanded Refund: `refund` before basil,
    `refunds[].refund` from basil on."""
    refunds = [note.get("refund"), *(entry.get("refund") for entry in objects(note.get("refunds")))]
    return [refund for refund in refunds if id_of(refund)]
