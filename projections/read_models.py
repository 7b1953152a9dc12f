"""Both buyer read models, fed by one follower: the log is read and decoded once per event.

`buyer_facts` (facts, claims, links: what permissions derive from) and `buyer_history` (the
auditor's index) always move together: one tracking position, one transaction per batch, one
generation, rebuilt together. Reading and decoding the log is a large part of projecting, so
reading it once for both halves that cost.

What an event touched (for the answer cache) is what `buyer_facts` reports: answers read only
its rows; the history index serves the auditor, never a permission.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from domain.aggregates import WebhookReceipt
from projections.answers import Touched
from projections.buyer_facts import BuyerFactsProjection
from projections.history import HistoryProjection
from projections.store import Cursor
from projections.touched import touched_elsewhere


class BuyerReadModels:
    name = "buyer_read_models"
    tables = BuyerFactsProjection.tables + HistoryProjection.tables
    indexes = BuyerFactsProjection.indexes + HistoryProjection.indexes
    # Receipts only guard against redelivery: neither read model reads them.
    ignored_topics = frozenset({WebhookReceipt.Created.TOPIC})

    def __init__(self) -> None:
        self.facts = BuyerFactsProjection()
        self.history = HistoryProjection()
        self.parts = (self.facts, self.history)

    def create_tables(self, cursor: Cursor) -> None:
        for part in self.parts:
            part.create_tables(cursor)

    @contextlib.contextmanager
    def batch(self, cursor: Cursor, events: Sequence[Any]) -> Iterator[None]:
        """A follower's batch: `apply` each of `events` within this block (see each part's
        `batch`: fewer statements, the same rows and the same reports as one by one)."""
        with self.facts.batch(cursor, events), self.history.batch(cursor, events):
            yield

    def apply(self, cursor: Cursor, position: int, event: Any) -> Touched | None:
        touched = self.facts.apply(cursor, position, event)
        self.history.apply(cursor, position, event)
        return touched

    def touched_elsewhere(self, cursor: Cursor, notifications: Sequence[Any]) -> list[Touched]:
        """What events another process applied touched (`projections/touched.py`)."""
        return touched_elsewhere(cursor, notifications)
