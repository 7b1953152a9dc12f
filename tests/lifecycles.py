"""Hypothesis strategies for customer lifecycles, rendered as Stripe webhook bodies.

Objects are built in the 2022-11-15 shape (the newest Glassfy supports) from the fields the real
fixtures carry; ids are fresh per customer so that lifecycles never collide.
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


def event(event_id: str, event_type: str, created: int, obj: dict[str, Any]) -> str:
    body = {
        "id": event_id,
        "object": "event",
        "api_version": "2022-11-15",
        "created": created,
        "type": event_type,
        "livemode": False,
        "data": {"object": obj},
    }
    return json.dumps(body)


def subscription(n: int, customer: str, status: str, product: str, start: int, **extra) -> dict:
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
                    "id": f"si_{customer}_{n}",
                    "price": {"id": f"price_{product}", "product": product},
                    "quantity": 1,
                }
            ],
        },
        **extra,
    }


def invoice(n: int, customer: str, sub_id: str, product: str, start: int, paid: bool) -> dict:
    return {
        "id": f"in_{customer}_{n}",
        "object": "invoice",
        "customer": customer,
        "subscription": sub_id,
        "status": "paid" if paid else "open",
        "paid": paid,
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
                    "type": "subscription",
                }
            ],
        },
    }


FATES = ["renew", "fail", "cancel", "refund", "upgrade", "stay"]


def lifecycle(index: int, product: str, start_day: int, fate: str, with_pass: bool) -> list[str]:
    """One customer's events: a subscription that may renew, fail, be canceled, refunded or
    upgraded, and maybe a one-time pass bought through Checkout."""
    customer = f"cus_gen{index}"
    start = T0 + start_day * DAY
    sub_id = f"sub_{customer}_0"
    events = [
        event(
            f"evt_{customer}_created",
            "customer.subscription.created",
            start,
            subscription(0, customer, "active", product, start),
        ),
        event(
            f"evt_{customer}_paid",
            "invoice.paid",
            start,
            invoice(0, customer, sub_id, product, start, paid=True),
        ),
    ]
    later = start + 30 * DAY
    if fate == "renew":
        events.append(
            event(
                f"evt_{customer}_renewed",
                "invoice.paid",
                later,
                invoice(1, customer, sub_id, product, later, paid=True),
            )
        )
    elif fate == "fail":
        events.append(
            event(
                f"evt_{customer}_failed",
                "invoice.payment_failed",
                later,
                invoice(1, customer, sub_id, product, later, paid=False),
            )
        )
        events.append(
            event(
                f"evt_{customer}_past_due",
                "customer.subscription.updated",
                later,
                subscription(0, customer, "past_due", product, later),
            )
        )
    elif fate == "cancel":
        events.append(
            event(
                f"evt_{customer}_deleted",
                "customer.subscription.deleted",
                start + 10 * DAY,
                subscription(0, customer, "canceled", product, start),
            )
        )
    elif fate == "refund":
        charge = {
            "id": f"ch_{customer}_0",
            "object": "charge",
            "customer": customer,
            "amount": 1000,
            "amount_refunded": 1000,
            "refunded": True,
            "payment_intent": f"pi_{customer}_0",
            "invoice": f"in_{customer}_0",
        }
        events.append(event(f"evt_{customer}_refunded", "charge.refunded", start + DAY, charge))
    elif fate == "upgrade":
        events.append(
            event(
                f"evt_{customer}_upgraded",
                "customer.subscription.updated",
                start + 2 * DAY,
                subscription(0, customer, "active", "prod_pro", start),
            )
        )
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
