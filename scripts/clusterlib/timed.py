"""Customers whose answer changes by time alone, at an instant chosen by the run.

Each is one webhook, sent at the start of the load, that leaves the customid entitled until an
instant `at` in the fault window, when its answer changes with no webhook at all: only the
projector that takes the customid's `due` row from the shared schedule can apply it.

    cancel_at   an active subscription scheduled to end at `at` (`cancel_at`): 4, then -5
    period_end  an active subscription whose period ended a leeway and a second before `at`
                (the leeway's last second is still within it), no renewal heard of: 5, then 0
    pass        a 30-day pass (`pass_30d`) bought 30 days before `at`: 3, then -5

Built from the recorded fixtures (a basil `customer.subscription.updated`, a 2020-08-27
payment-mode `checkout.session.completed`), with fresh ids.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib.events import fixtures_dir

KINDS = ("cancel_at", "period_end", "pass")
# The entitlement each kind's answer changes to at its instant (PRODUCT.md's codes).
CHANGES_TO = {"cancel_at": -5, "period_end": 0, "pass": -5}
DAY = 86400
PASS_DAYS = 30  # the demo catalogue's pass_30d
SUBSCRIPTION = "events-newer/2025-04-30.basil__customer.subscription.updated__godgpt__1.json"
CHECKOUT = "events/checkout.session.completed__srm__1.json"


@dataclass(frozen=True)
class Timed:
    customid: str
    kind: str
    at: int  # the instant its answer changes (epoch seconds)
    body: str  # the one webhook that sets it up

    def expected(self) -> list[Any]:
        return [self.customid, self.kind, self.at, CHANGES_TO[self.kind]]


def fresh(prefix: str) -> str:
    return f"{prefix}_{os.urandom(12).hex()}"


def build(project_root: Path, instants: list[int], now: int, leeway: int = DAY) -> list[Timed]:
    """One customer per instant, the kinds in turn; `leeway` is the app's renewal_leeway."""
    base = fixtures_dir(project_root)
    subscription = json.loads((base / SUBSCRIPTION).read_text())
    checkout = json.loads((base / CHECKOUT).read_text())
    tag = os.urandom(3).hex()
    made = []
    for number, at in enumerate(instants):
        kind = KINDS[number % len(KINDS)]
        customid = f"timed_{tag}_{number}_{kind}"
        if kind == "pass":
            event = _pass(checkout, customid, bought=at - PASS_DAYS * DAY)
        else:
            event = _subscription(subscription, customid, kind, at, now, leeway)
        made.append(Timed(customid, kind, at, json.dumps(event)))
    return made


def _subscription(
    template: dict[str, Any], customid: str, kind: str, at: int, now: int, leeway: int
) -> dict[str, Any]:
    event = copy.deepcopy(template)
    event["id"], event["created"] = fresh("evt"), now
    event["request"] = {"id": fresh("req"), "idempotency_key": None}
    sub = event["data"]["object"]
    if kind == "cancel_at":  # a month's period, cut short at `at`
        start, end = now - DAY, now + 29 * DAY
        sub.update(cancel_at=at, cancel_at_period_end=False, canceled_at=now)
    else:  # the leeway after the period's end runs out at `at`; nothing heard since
        start, end = at - leeway - 1 - DAY, at - leeway - 1
        sub.update(cancel_at=None, cancel_at_period_end=False, canceled_at=None)
        sub["cancellation_details"] = {"comment": None, "feedback": None, "reason": None}
    sub_id = fresh("sub")
    sub.update(
        id=sub_id,
        customer=fresh("cus"),
        created=start,
        start_date=start,
        billing_cycle_anchor=start,
        latest_invoice=fresh("in"),
        default_payment_method=fresh("pm"),
        metadata={"customid": customid},
        status="active",
    )
    sub["plan"]["product"] = "prod_premium"
    for item in sub["items"]["data"]:
        item.update(
            id=fresh("si"), subscription=sub_id, current_period_start=start,
            current_period_end=end, created=start,
        )  # fmt: skip
        item["plan"]["product"] = item["price"]["product"] = "prod_premium"
    sub["items"]["url"] = f"/v1/subscription_items?subscription={sub_id}"
    event["data"]["previous_attributes"] = {"metadata": {}}
    return event


def _pass(template: dict[str, Any], customid: str, bought: int) -> dict[str, Any]:
    event = copy.deepcopy(template)
    event["id"], event["created"] = fresh("evt"), bought
    session = event["data"]["object"]
    session.update(
        id=fresh("cs"),
        created=bought,
        customer=None,
        payment_intent=fresh("pi"),
        metadata={"customid": customid, "product": "prod_pass"},
        payment_status="paid",
        mode="payment",
    )
    return event
