"""Recording Stripe events: exactly once, on the right buyer's history, durably.

A Stripe event becomes (a) the typed domain event on its buyer's aggregate and (b) a
`WebhookReceipt` keyed by (app, Stripe event id), saved in one transaction. A redelivery fails on
the receipt's unique key and writes nothing. Two writers appending to one buyer at once collide on
the buyer's next version; the loser re-reads the version and tries again, so both land once.

Appending reads only the buyer's newest version number, never its whole history: the aggregate
holds no state a webhook could violate, so replaying thousands of events to append one is waste.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from eventsourcing.persistence import IntegrityError

from adapters.appending import at_version, next_in_history, save_retrying
from adapters.eventstore import EventLog
from adapters.stripe.envelope import StripeEnvelope
from domain.aggregates import Buyer, WebhookReceipt, buyer_id, receipt_id

VERSION_CACHE_SIZE = 100_000  # buyers whose next version is remembered


class Outcome(Enum):
    RECORDED = "recorded"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Webhook:
    app_id: str
    envelope: StripeEnvelope
    raw: str
    source: str = "webhook"  # or "backfill", "replay": kept with the event (from where)


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
        self._next_versions: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._cache_lock = threading.Lock()

    def record_many(self, webhooks: list[Webhook]) -> list[Outcome | Exception]:
        """Record several webhooks in ONE transaction (group commit): one fsync for all.

        Any uniqueness failure (a redelivery, or another process appending to the same buyer)
        aborts the whole batch, which is then recorded one webhook at a time, so each gets its
        own exact outcome. A storage failure is every webhook's outcome: none was stored.
        """
        try:
            events, outcomes, next_versions = self._batch(webhooks)
            self.log.save(*events)
        except IntegrityError:
            self._forget([(w.app_id, w.envelope.buyer_key) for w in webhooks])
            return [self._outcome_of(webhook) for webhook in webhooks]
        except Exception as error:
            return [error] * len(webhooks)
        self._remember(next_versions)
        self.on_recorded()
        return outcomes

    def _outcome_of(self, webhook: Webhook) -> Outcome | Exception:
        try:
            return self.record(webhook)
        except Exception as error:
            return error

    def _batch(
        self, webhooks: list[Webhook]
    ) -> tuple[list[Any], list[Outcome], dict[tuple[str, str], int]]:
        """The events of a batch; buyers appearing twice get consecutive versions, and an event
        id appearing twice is a duplicate of its first copy."""
        events: list[Any] = []
        outcomes: list[Outcome] = []
        next_versions = self._unknown_versions(webhooks)
        seen: set[tuple[str, str]] = set()
        for webhook in webhooks:
            key = (webhook.app_id, webhook.envelope.event_id)
            if key in seen:
                outcomes.append(Outcome.DUPLICATE)
                continue
            seen.add(key)
            buyer = (webhook.app_id, webhook.envelope.buyer_key)
            known = next_versions.get(buyer) or self._next_versions.get(buyer)
            new = self.new_events(webhook, known)
            next_versions[buyer] = new[-1].originator_version + 1
            events += new
            outcomes.append(Outcome.RECORDED)
        return events, outcomes, next_versions

    def _unknown_versions(self, webhooks: list[Webhook]) -> dict[tuple[str, str], int]:
        """The next version of each buyer of the batch that the cache does not know, read in
        one query (1 for a new buyer: its registration comes first)."""
        unknown = {
            (w.app_id, w.envelope.buyer_key)
            for w in webhooks
            if (w.app_id, w.envelope.buyer_key) not in self._next_versions
        }
        ids = {buyer_id(*buyer): buyer for buyer in unknown}
        found = self.log.last_versions(list(ids))
        return {
            buyer: found[bid] + 1 if bid in found else Buyer.INITIAL_VERSION
            for bid, buyer in ids.items()
        }

    def _remember(self, next_versions: dict[tuple[str, str], int]) -> None:
        """Cache each buyer's next version, so that appending needs no read. Another process
        may append meanwhile: the stale version then fails on the version's unique key, the
        batch is retried one webhook at a time from fresh reads, and the entry is forgotten."""
        with self._cache_lock:
            for buyer, version in next_versions.items():
                self._next_versions[buyer] = version
                self._next_versions.move_to_end(buyer)
            while len(self._next_versions) > VERSION_CACHE_SIZE:
                self._next_versions.popitem(last=False)

    def _forget(self, buyers: list[tuple[str, str]]) -> None:
        with self._cache_lock:
            for buyer in buyers:
                self._next_versions.pop(buyer, None)

    def record(self, webhook: Webhook) -> Outcome:
        saved = save_retrying(
            self.log, lambda: self.new_events(webhook), lambda: self.is_duplicate(webhook)
        )
        if saved is None:
            return Outcome.DUPLICATE
        self._forget([(webhook.app_id, webhook.envelope.buyer_key)])  # re-read next time
        self.on_recorded()
        return Outcome.RECORDED

    def is_duplicate(self, webhook: Webhook) -> bool:
        rid = receipt_id(webhook.app_id, webhook.envelope.event_id)
        return self.log.last_version(rid) is not None

    def new_events(self, webhook: Webhook, version: int | None = None) -> list[Any]:
        """The receipt, plus the buyer's registration if new, plus the typed Stripe event
        (at `version` when the caller already knows the buyer's next version; for a new buyer
        that is its registration's)."""
        env = webhook.envelope
        receipt = WebhookReceipt.received(webhook.app_id, env.event_id, env.buyer_key)
        if version is None:
            registration, bid, version = next_in_history(self.log, webhook.app_id, env.buyer_key)
        else:
            registration, bid, version = at_version(webhook.app_id, env.buyer_key, version)
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
            source=webhook.source,
        )
        return [receipt, *registration, recorded]
