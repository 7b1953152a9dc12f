"""Hypothesis strategies for customer lifecycles, rendered as Stripe webhook bodies.

Objects are built in the 2022-11-15 shape (the newest Glassfy supports) from the fields the real
fixtures carry, and, for the fates that only happen so from basil on (a refund or a dispute
reaching an invoice through its InvoicePayment), in the basil shape; ids are fresh per customer
so that lifecycles never collide.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

T0 = 1_760_000_000  # a fixed Stripe clock for generated events
DAY = 86400
PRODUCTS = ["prod_basic", "prod_pro", "prod_pass"]

CATALOGUE = {
    "skus": [
        {"skuId": "basic", "productId": "prod_basic"},
        {"skuId": "pro", "productId": "prod_pro"},
        {"skuId": "pass", "productId": "prod_pass", "duration": "P30D"},
    ],
    "permissions": [
        {"permissionId": "access", "skuIds": ["basic", "pro", "pass"]},
        {"permissionId": "pro", "skuIds": ["pro"]},
    ],
}


BASIL = "2025-03-31.basil"


def event(
    event_id: str,
    event_type: str,
    created: int,
    obj: dict[str, Any],
    version: str = "2022-11-15",
    previous: dict[str, Any] | None = None,
) -> str:
    body = {
        "id": event_id,
        "object": "event",
        "api_version": version,
        "created": created,
        "type": event_type,
        "livemode": False,
        "data": {"object": obj},
    }
    if previous is not None:
        body["data"]["previous_attributes"] = previous
    return json.dumps(body)


def subscription(n: int, customer: str, status: str, product: str, start: int, **extra) -> dict:
    products = extra.pop("products", [product])
    return {
        "id": f"sub_{customer}_{n}",
        "object": "subscription",
        "customer": customer,
        "status": status,
        "current_period_start": start,
        "current_period_end": start + 30 * DAY,
        "cancel_at_period_end": extra.pop("cancel_at_period_end", False),
        "cancel_at": None,
        "canceled_at": None,
        "ended_at": None,
        "metadata": {"customid": f"user_{customer}"},
        "items": {
            "object": "list",
            "data": [
                {
                    "id": f"si_{customer}_{n}" + ("" if i == 0 else f"_{i}"),
                    "price": {"id": f"price_{item}", "product": item},
                    "quantity": 1,
                }
                for i, item in enumerate(products)
            ],
        },
        **extra,
    }


def invoice(
    n: int, customer: str, sub_id: str | None, product: str, start: int, paid: bool
) -> dict:
    return {
        "id": f"in_{customer}_{n}",
        "object": "invoice",
        "customer": customer,
        "subscription": sub_id,
        "status": "paid" if paid else "open",
        "paid": paid,
        "amount_paid": 1000 if paid else 0,
        "charge": f"ch_{customer}_{n}",
        "payment_intent": f"pi_{customer}_{n}",
        "period_start": start,
        "period_end": start,
        "lines": {
            "object": "list",
            "data": [
                {
                    "id": f"il_{customer}_{n}",
                    "price": {"id": f"price_{product}", "product": product},
                    "period": {"start": start, "end": start + 30 * DAY},
                    "subscription": sub_id,
                    "type": "subscription" if sub_id else "invoiceitem",
                }
            ],
        },
    }


def as_basil(invoice_obj: dict) -> dict:
    """The invoice in the basil shape: subscription under `parent`, line prices under
    `pricing`, no `paid`, `charge` or `payment_intent` (the InvoicePayment names the payment)."""
    basil = {k: v for k, v in invoice_obj.items() if k not in ("paid", "charge", "payment_intent")}
    sub_id = basil.pop("subscription")
    details = {"subscription": sub_id, "metadata": {"customid": f"user_{basil['customer']}"}}
    basil["parent"] = {"type": "subscription_details", "subscription_details": details}
    lines = []
    for line in basil["lines"]["data"]:
        price = line["price"]
        lines.append(
            {
                "id": line["id"],
                "period": line["period"],
                "pricing": {
                    "type": "price_details",
                    "price_details": {"price": price["id"], "product": price["product"]},
                },
                "parent": {
                    "type": "subscription_item_details",
                    "subscription_item_details": {"subscription": sub_id},
                },
            }
        )
    basil["lines"] = {"object": "list", "data": lines}
    return basil


def invoice_payment(n: int, customer: str, sub_id: str) -> dict:
    """The InvoicePayment that says which payment intent paid invoice n (basil and later)."""
    details = {"subscription": sub_id, "metadata": {"customid": f"user_{customer}"}}
    return {
        "id": f"inpay_{customer}_{n}",
        "object": "invoice_payment",
        "amount_paid": 1000,
        "invoice": f"in_{customer}_{n}",
        "parent": {"type": "subscription_details", "subscription_details": details},
        "payment": {"type": "payment_intent", "payment_intent": f"pi_{customer}_{n}"},
        "status": "paid",
    }


def charge(n: int, customer: str, refunded: bool, with_invoice: bool = True) -> dict:
    obj = {
        "id": f"ch_{customer}_{n}",
        "object": "charge",
        "customer": customer,
        "amount": 1000,
        "amount_refunded": 1000 if refunded else 0,
        "refunded": refunded,
        "payment_intent": f"pi_{customer}_{n}",
    }
    if with_invoice:  # removed from charges at basil
        obj["invoice"] = f"in_{customer}_{n}"
    return obj


FATES = [
    "renew",
    "fail",
    "cancel",
    "refund",
    "upgrade",
    "stay",
    "basil_refund",  # refunded; the invoice names no payment, its InvoicePayment does
    "basil_dispute",  # a lost dispute, on the payment's own history
    "credit_note",  # a credit note for the whole amount paid
    "dunning",  # past_due over a renewal, nothing paid
    "renewal_failed",  # the renewal invoice failed, no subscription update heard
    "item_removed",  # a second item (pro) removed with nothing in its place
    "same_second",  # created incomplete and updated active in the same second
    "canceled_now",  # canceled at once while cancel_at_period_end is set
    "one_off",  # a one-off invoice for a pass, later refunded
]


def lifecycle(index: int, product: str, start_day: int, fate: str, with_pass: bool) -> list[str]:
    """One customer's events: a subscription that may renew, fail, be canceled, refunded or
    upgraded (and the like, see `FATES`), and maybe a one-time pass bought through Checkout."""
    customer = f"cus_gen{index}"
    start = T0 + start_day * DAY
    sub_id = f"sub_{customer}_0"
    products = [product, "prod_pro"] if fate == "item_removed" else [product]
    first_paid = invoice(0, customer, sub_id, product, start, paid=True)
    basil = fate in ("basil_refund", "basil_dispute")
    created = subscription(0, customer, "active", product, start, products=products)
    if fate == "same_second":
        created["status"] = "incomplete"
    events = [
        event(f"evt_{customer}_created", "customer.subscription.created", start, created),
        event(
            f"evt_{customer}_paid",
            "invoice.paid",
            start,
            as_basil(first_paid) if basil else first_paid,
            BASIL if basil else "2022-11-15",
        ),
    ]
    events += _fate(fate, customer, sub_id, product, start)
    if with_pass:
        session = {
            "id": f"cs_{customer}",
            "object": "checkout.session",
            "mode": "payment",
            "payment_status": "paid",
            "customer": customer,
            "payment_intent": f"pi_{customer}_pass",
            "metadata": {"product": "prod_pass", "customid": f"user_{customer}"},
        }
        events.append(
            event(f"evt_{customer}_pass", "checkout.session.completed", start + 3 * DAY, session)
        )
    return events


def _fate(fate: str, customer: str, sub_id: str, product: str, start: int) -> list[str]:
    later = start + 30 * DAY
    if fate in _FATES:
        return _FATES[fate](customer, sub_id, product, start, later)
    return []


def _renew(customer: str, sub_id: str, product: str, start: int, later: int) -> list[str]:
    renewal = invoice(1, customer, sub_id, product, later, paid=True)
    return [event(f"evt_{customer}_renewed", "invoice.paid", later, renewal)]


def _fail(customer: str, sub_id: str, product: str, start: int, later: int) -> list[str]:
    failed = invoice(1, customer, sub_id, product, later, paid=False)
    past_due = subscription(0, customer, "past_due", product, later)
    return [
        event(f"evt_{customer}_failed", "invoice.payment_failed", later, failed),
        event(f"evt_{customer}_past_due", "customer.subscription.updated", later, past_due,
              previous={"status": "active"}),
    ]  # fmt: skip


def _cancel(customer: str, sub_id: str, product: str, start: int, later: int) -> list[str]:
    canceled = subscription(0, customer, "canceled", product, start)
    return [event(f"evt_{customer}_deleted", "customer.subscription.deleted", start + 10 * DAY,
                  canceled)]  # fmt: skip


def _refund(customer: str, sub_id: str, product: str, start: int, later: int) -> list[str]:
    refunded = charge(0, customer, refunded=True)
    return [event(f"evt_{customer}_refunded", "charge.refunded", start + DAY, refunded)]


def _upgrade(customer: str, sub_id: str, product: str, start: int, later: int) -> list[str]:
    upgraded = subscription(0, customer, "active", "prod_pro", start)
    return [event(f"evt_{customer}_upgraded", "customer.subscription.updated", start + 2 * DAY,
                  upgraded)]  # fmt: skip


def _basil_payment(customer: str, sub_id: str, start: int) -> str:
    return event(f"evt_{customer}_inpay", "invoice_payment.paid", start,
                 invoice_payment(0, customer, sub_id), BASIL)  # fmt: skip


def _basil_refund(customer: str, sub_id: str, product: str, start: int, later: int) -> list[str]:
    refunded = charge(0, customer, refunded=True, with_invoice=False)
    return [
        _basil_payment(customer, sub_id, start),
        event(f"evt_{customer}_refunded", "charge.refunded", start + DAY, refunded, BASIL),
    ]


def _basil_dispute(customer: str, sub_id: str, product: str, start: int, later: int) -> list[str]:
    intent = {"id": f"pi_{customer}_0", "object": "payment_intent", "customer": customer,
              "amount": 1000, "latest_charge": f"ch_{customer}_0"}  # fmt: skip
    dispute = {"id": f"dp_{customer}", "object": "dispute", "charge": f"ch_{customer}_0",
               "payment_intent": f"pi_{customer}_0", "status": "lost"}  # fmt: skip
    return [
        _basil_payment(customer, sub_id, start),
        event(f"evt_{customer}_pi", "payment_intent.succeeded", start, intent, BASIL),
        event(f"evt_{customer}_disputed", "charge.dispute.closed", start + DAY, dispute, BASIL),
    ]


def _credit_note(customer: str, sub_id: str, product: str, start: int, later: int) -> list[str]:
    note = {"id": f"cn_{customer}", "object": "credit_note", "customer": customer,
            "invoice": f"in_{customer}_0", "amount": 1000, "type": "post_payment",
            "refund": f"re_{customer}"}  # fmt: skip
    return [event(f"evt_{customer}_credited", "credit_note.created", start + DAY, note)]


def _dunning(customer: str, sub_id: str, product: str, start: int, later: int) -> list[str]:
    again = later + 30 * DAY
    return [
        *_fail(customer, sub_id, product, start, later),
        event(f"evt_{customer}_failed_again", "invoice.payment_failed", again,
              invoice(2, customer, sub_id, product, again, paid=False)),
        event(f"evt_{customer}_still_past_due", "customer.subscription.updated", again,
              subscription(0, customer, "past_due", product, again),
              previous={"current_period_start": later, "current_period_end": again}),
    ]  # fmt: skip


def _renewal_failed(customer: str, sub_id: str, product: str, start: int, later: int) -> list[str]:
    return _fail(customer, sub_id, product, start, later)[:1]


def _item_removed(customer: str, sub_id: str, product: str, start: int, later: int) -> list[str]:
    removed = subscription(0, customer, "active", product, start)
    return [event(f"evt_{customer}_item_removed", "customer.subscription.updated",
                  start + 2 * DAY, removed)]  # fmt: skip


def _same_second(customer: str, sub_id: str, product: str, start: int, later: int) -> list[str]:
    active = subscription(0, customer, "active", product, start)
    return [event(f"evt_{customer}_activated", "customer.subscription.updated", start, active,
                  previous={"status": "incomplete"})]  # fmt: skip


def _canceled_now(customer: str, sub_id: str, product: str, start: int, later: int) -> list[str]:
    ended = start + 10 * DAY
    now = subscription(0, customer, "canceled", product, start, cancel_at_period_end=True)
    now.update(canceled_at=ended, ended_at=ended)
    return [event(f"evt_{customer}_deleted", "customer.subscription.deleted", ended, now)]


def _one_off(customer: str, sub_id: str, product: str, start: int, later: int) -> list[str]:
    once = invoice(9, customer, None, "prod_pass", start + DAY, paid=True)
    refunded = charge(9, customer, refunded=True)
    return [
        event(f"evt_{customer}_one_off", "invoice.paid", start + DAY, once),
        event(f"evt_{customer}_one_off_refunded", "charge.refunded", start + 5 * DAY, refunded),
    ]


_FATES = {
    "renew": _renew,
    "fail": _fail,
    "cancel": _cancel,
    "refund": _refund,
    "upgrade": _upgrade,
    "basil_refund": _basil_refund,
    "basil_dispute": _basil_dispute,
    "credit_note": _credit_note,
    "dunning": _dunning,
    "renewal_failed": _renewal_failed,
    "item_removed": _item_removed,
    "same_second": _same_second,
    "canceled_now": _canceled_now,
    "one_off": _one_off,
}


def population(count: int) -> list[str]:
    """A deterministic mix of `count` customers, every fate represented."""
    return [
        body
        for i in range(count)
        for body in lifecycle(i, PRODUCTS[i % 2], i % 6, FATES[i % len(FATES)], i % 3 == 0)
    ]


@st.composite
def customer_lifecycle(draw: st.DrawFn, index: int) -> list[str]:
    return lifecycle(
        index,
        product=draw(st.sampled_from(PRODUCTS[:2])),
        start_day=draw(st.integers(0, 5)),
        fate=draw(st.sampled_from(FATES)),
        with_pass=draw(st.booleans()),
    )


@st.composite
def lifecycles(draw: st.DrawFn, max_customers: int = 3) -> list[str]:
    count = draw(st.integers(1, max_customers))
    return [body for i in range(count) for body in draw(customer_lifecycle(i))]


def customids(bodies: list[str]) -> list[str]:
    found = set()
    for body in bodies:
        customer = json.loads(body)["data"]["object"].get("customer")
        if customer:
            found.add(f"user_{customer}")
    return sorted(found)
