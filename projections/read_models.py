"""The buyer read models, fed by one follower: the log is read and decoded once per event.

`buyer_facts` (facts, claims, links: what answers derive from), `buyer_history` (the auditor's
index) and `customer_grants` (the answers now, derived from the facts) always move together:
one tracking position, one transaction per batch, one generation, rebuilt together. A batch's
facts and the answers derived from them commit at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from domain.aggregates import AppSync, WebhookReceipt
from domain.policy import AppPolicy
from projections.buyer_facts import BuyerFactsProjection, StripeReaders
from projections.grants import DUE_CHUNK, GrantsProjection
from projections.history import HistoryProjection
from projections.store import Cursor


class BuyerReadModels:
    name = "buyer_read_models"
    tables = BuyerFactsProjection.tables + HistoryProjection.tables + GrantsProjection.tables
    indexes = BuyerFactsProjection.indexes + HistoryProjection.indexes + GrantsProjection.indexes
    # Receipts only guard against redelivery, sync runs are read from the log (`GET /v1/sync`):
    # no read model reads them. (A change log's announcements are in the history index.)
    ignored_topics = frozenset(
        {
            WebhookReceipt.Created.TOPIC,
            AppSync.Created.TOPIC,
            AppSync.Ran.TOPIC,
        }
    )

    def __init__(
        self,
        policies: Mapping[str, AppPolicy],
        clock: Callable[[], float],
        stripe: StripeReaders,
    ) -> None:
        self.facts = BuyerFactsProjection(stripe)
        self.history = HistoryProjection()
        self.grants = GrantsProjection(policies, clock)
        self.parts = (self.facts, self.history, self.grants)

    def create_tables(self, cursor: Cursor) -> None:
        for part in self.parts:
            part.create_tables(cursor)

    @contextlib.contextmanager
    def batch(self, cursor: Cursor, events: Sequence[Any]) -> Iterator[None]:
        """A follower's batch: `apply` each of `events` within this block (see each part's
        `batch`: fewer statements, the same rows as one by one). The grants come last: they
        are derived from the facts the other parts write when their blocks end."""
        with (
            self.grants.batch(cursor),
            self.facts.batch(cursor, events),
            self.history.batch(cursor, events),
        ):
            yield

    def apply(self, cursor: Cursor, position: int, event: Any) -> None:
        touched = self.facts.apply(cursor, position, event)
        self.history.apply(cursor, position, event)
        self.grants.apply(cursor, position, event, touched)

    def derive_due(self, cursor: Cursor, limit: int = DUE_CHUNK) -> int:
        """Derive the answers whose time has come (`GrantsProjection.derive_due`)."""
        return self.grants.derive_due(cursor, limit)

    def seed(self, cursor: Cursor, position: int) -> None:
        self.grants.seed(cursor, position)

    def activated(self, cursor: Cursor) -> None:
        """A rebuilt generation now answers (in the switch's transaction): announce the
        answers it corrected (`GrantsProjection.announce_rebuilt`)."""
        self.grants.announce_rebuilt(cursor)

    def bulk(self, generation: int) -> contextlib.AbstractContextManager[None]:
        """A rebuild's bulk pass of `generation`: answers are derived at its end, not per batch."""
        return self.grants.bulk(generation)
