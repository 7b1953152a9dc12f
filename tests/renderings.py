"""The same Stripe events rendered in another API version's shape (for version-neutrality tests).

Built from real older payloads by moving fields where Stripe's changelog says they moved.
"""

from __future__ import annotations

import copy
from typing import Any


def as_basil_subscription(payload: dict[str, Any]) -> dict[str, Any]:
    """The same subscription event rendered in the basil shape: `current_period_*` moved from
    the subscription onto each of its items."""
    basil = copy.deepcopy(payload)
    basil["id"] += "_basil"
    basil["api_version"] = "2025-03-31.basil"
    subscription = basil["data"]["object"]
    period = {key: subscription.pop(key) for key in ("current_period_start", "current_period_end")}
    for item in subscription["items"]["data"]:
        item.update(period)
    return basil


def as_basil_invoice(payload: dict[str, Any]) -> dict[str, Any]:
    """The same invoice event in the basil shape: subscription under `parent`, line prices under
    `pricing.price_details`, no `paid`, `charge` or `payment_intent`."""
    basil = copy.deepcopy(payload)
    invoice = basil["data"]["object"]
    for key in ("paid", "charge", "payment_intent"):
        invoice.pop(key, None)
    invoice["parent"] = {
        "type": "subscription_details",
        "subscription_details": {"subscription": invoice.pop("subscription"), "metadata": {}},
    }
    for line in invoice["lines"]["data"]:
        price = line.pop("price")
        line.pop("plan", None)
        line["pricing"] = {
            "type": "price_details",
            "price_details": {"price": price["id"], "product": price["product"]},
        }
        line["parent"] = {
            "type": "subscription_item_details",
            "subscription_item_details": {
                "subscription": line.pop("subscription"),
                "subscription_item": line.pop("subscription_item"),
            },
        }
    return basil
