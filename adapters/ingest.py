"""Recording Stripe events: exactly once, on the right buyer's history, durably.

A Stripe event becomes (a) the typed domain event on its buyer's aggregate and (b) a
`WebhookReceipt` keyed by (app, Stripe event id), saved in one transaction. A redelivery fails on
the receipt's unique key and writes nothing. Two writers appending to one buyer at once collide on
the buyer's next version; the loser re-reads the version and tries again, so both land once.

Appending reads only the buyer's newest version number, never its whole history: the aggregate
holds no state a webhook could violate, so replaying thousands of events to append one is waste.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from eventsourcing.persistence import IntegrityError

from adapters.eventstore import EventLog
from adapters.stripe.envelope import StripeEnvelope
from domain.aggregates import Buyer, WebhookReceipt, buyer_id, receipt_id

MAX_ATTEMPTS = 20


class Outcome(Enum):
    RECORDED = "recorded"
    DUPLICATE = "duplicate"


class WriteConflict(RuntimeError):
    """Other writers kept winning the race for this buyer; the caller should answer 5xx."""


@dataclass(frozen=True)
class Webhook:
    app_id: str
    envelope: StripeEnvelope
    raw: str


class Ingestor:
    def __init__(self, log: EventLog, clock: Callable[[], float] = time.time) -> None:
        self.log = log
        self.clock = clock

    def record(self, webhook: Webhook) -> Outcome:
        for attempt in range(MAX_ATTEMPTS):
            try:
                self.log.save(*self.new_events(webhook))
            except IntegrityError:
                if self.is_duplicate(webhook):
                    return Outcome.DUPLICATE
                _back_off(attempt)  # lost a race for the buyer's next version: retry
            else:
                return Outcome.RECORDED
        raise WriteConflict(f"could not append {webhook.envelope.event_id} after retries")

    def is_duplicate(self, webhook: Webhook) -> bool:
        rid = receipt_id(webhook.app_id, webhook.envelope.event_id)
        return self.log.last_version(rid) is not None

    def new_events(self, webhook: Webhook) -> list[Any]:
        """The receipt, plus the buyer's registration if new, plus the typed Stripe event."""
        env = webhook.envelope
        receipt = WebhookReceipt(webhook.app_id, env.event_id, env.buyer_key)
        events: list[Any] = receipt.collect_events()
        bid = buyer_id(webhook.app_id, env.buyer_key)
        version = self.log.last_version(bid)
        if version is None:
            events += Buyer(webhook.app_id, env.buyer_key).collect_events()
            version = Buyer.INITIAL_VERSION
        events.append(
            env.event_class(
                originator_id=bid,
                originator_version=version + 1,
                timestamp=Buyer.Event.create_timestamp(),
                stripe_event_id=env.event_id,
                stripe_type=env.type,
                api_version=env.api_version,
                stripe_created=env.created,
                received_at=self.clock(),
                raw=webhook.raw,
            )
        )
        return events


def _back_off(attempt: int) -> None:
    time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
