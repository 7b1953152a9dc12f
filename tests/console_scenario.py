"""One customer's life for the console's tests, browser tests and screenshots: a subscription
renewing (code 5), set to cancel at period end (4), then ended (-5); keys of each role."""

from __future__ import annotations

from typing import Any

from tests.lifecycles import CATALOGUE, DAY, T0, event, invoice, subscription

CUSTOMER = "cus_Console0001"
CUSTOMID = f"user_{CUSTOMER}"  # what the subscription's metadata.customid links
SUB = f"sub_{CUSTOMER}_0"
KEYS = {"read": "console-read-key", "audit": "console-audit-key", "admin": "console-admin-key"}
INSTANTS = {"renewing": T0 + 5 * DAY, "cancelling": T0 + 15 * DAY, "ended": T0 + 40 * DAY}
EVENT_IDS = ["evt_console_created", "evt_console_paid", "evt_console_cancel", "evt_console_end"]


def api_keys() -> list[Any]:
    return [{"key": key, "role": role} for role, key in KEYS.items()]


def bodies() -> list[str]:
    active = subscription(0, CUSTOMER, "active", "prod_pro", T0)
    cancelling = subscription(0, CUSTOMER, "active", "prod_pro", T0, cancel_at_period_end=True)
    ended = subscription(0, CUSTOMER, "canceled", "prod_pro", T0, ended_at=T0 + 30 * DAY)
    paid = invoice(0, CUSTOMER, SUB, "prod_pro", T0, True)
    return [
        event(EVENT_IDS[0], "customer.subscription.created", T0, active),
        event(EVENT_IDS[1], "invoice.paid", T0 + 60, paid),
        event(EVENT_IDS[2], "customer.subscription.updated", T0 + 10 * DAY, cancelling),
        event(EVENT_IDS[3], "customer.subscription.deleted", T0 + 30 * DAY, ended),
    ]


__all__ = ["CATALOGUE", "CUSTOMER", "CUSTOMID", "INSTANTS", "KEYS", "api_keys", "bodies"]
