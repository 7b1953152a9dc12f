"""Both buyer read models, fed by one follower: the log is read and decoded once per event.

`buyer_facts` (facts, claims, links: what permissions derive from) and `buyer_history` (the
auditor's index) always move together: one tracking position, one transaction per batch, one
generation, rebuilt together. Reading and decoding the log is a large part of projecting, so
reading it once for both halves that cost.
"""

from __future__ import annotations

from typing import Any

from projections.buyer_facts import BuyerFactsProjection
from projections.history import HistoryProjection
from projections.store import Cursor


class BuyerReadModels:
    name = "buyer_read_models"
    tables = BuyerFactsProjection.tables + HistoryProjection.tables
    indexes = BuyerFactsProjection.indexes + HistoryProjection.indexes

    def __init__(self) -> None:
        self.parts = (BuyerFactsProjection(), HistoryProjection())

    def create_tables(self, cursor: Cursor) -> None:
        for part in self.parts:
            part.create_tables(cursor)

    def apply(self, cursor: Cursor, position: int, event: Any) -> None:
        for part in self.parts:
            part.apply(cursor, position, event)
