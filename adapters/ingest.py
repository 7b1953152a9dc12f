"""Recording Stripe events: exactly once, on the right buyer's history, durably.

A Stripe event becomes (a) the typed domain event on its buyer's aggregate and (b) a
`WebhookReceipt` keyed by (app, Stripe event id), saved in one transaction. A redelivery fails on
the receipt's unique key and writes nothing. Two writers appending to one buyer at once collide on
the buyer's next version; the loser re-reads the version and tries again, so both land once.

Appending reads only the buyer's newest version number, never its whole history: the aggregate
holds no state a webhook could violate, so replaying thousands of events to append one is waste.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from adapters.appending import next_in_history, save_retrying
from adapters.eventstore import EventLog
from adapters.stripe.envelope import StripeEnvelope
from domain.aggregates import Buyer, WebhookReceipt, receipt_id


class Outcome(Enum):
    RECORDED = "recorded"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Webhook:
    app_id: str
    envelope: StripeEnvelope
    raw: str


class Ingestor:
    def __init__(
        self,
        log: EventLog,
        clock: Callable[[], float] = time.time,
        on_recorded: Callable[[], None] = lambda: None,
    ) -> None:
        self.log = log
        self.clock = clock
        self.on_recorded = on_recorded  # e.g. wake the projections

    def record(self, webhook: Webhook) -> Outcome:
        saved = save_retrying(
            self.log, lambda: self.new_events(webhook), lambda: self.is_duplicate(webhook)
        )
        if not saved:
            return Outcome.DUPLICATE
        self.on_recorded()
        return Outcome.RECORDED

    def is_duplicate(self, webhook: Webhook) -> bool:
        rid = receipt_id(webhook.app_id, webhook.envelope.event_id)
        return self.log.last_version(rid) is not None

    def new_events(self, webhook: Webhook) -> list[Any]:
        """The receipt, plus the buyer's registration if new, plus the typed Stripe event."""
        env = webhook.envelope
        receipt = WebhookReceipt(webhook.app_id, env.event_id, env.buyer_key)
        registration, bid, version = next_in_history(self.log, webhook.app_id, env.buyer_key)
        recorded = env.event_class(
            originator_id=bid,
            originator_version=version,
            timestamp=Buyer.Event.create_timestamp(),
            stripe_event_id=env.event_id,
            stripe_type=env.type,
            api_version=env.api_version,
            stripe_created=env.created,
            received_at=self.clock(),
            raw=webhook.raw,
        )
        return [*receipt.collect_events(), *registration, recorded]
