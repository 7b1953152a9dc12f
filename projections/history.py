"""The buyer-history index: where each buyer event sits in the log, and what it is about.

A customer's history is read from the event log itself (the events, with their raw bodies, are the
record), but the log cannot answer "the next 100 events of these buyers after position P, of type
T, created between A and B" without decoding every event. This read model keeps one small row per
buyer event (no payload): its aggregate and version, its notification position, its Stripe id,
type and `created`, and when it was recorded. A history page is then one indexed query here plus
one `select_events` per run of consecutive versions (`adapters/usecases/history.py`).

It is fed by the same follower as the buyer-facts read model (`projections/read_models.py`): one
read of the log for both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from domain.aggregates import Buyer
from domain.announcements import ChangeLog
from projections.store import Cursor, placeholders

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS buyer_history (
        buyer_uuid TEXT NOT NULL, version INTEGER NOT NULL, position BIGINT NOT NULL,
        app_id TEXT NOT NULL, buyer_key TEXT NOT NULL, topic TEXT NOT NULL,
        stripe_event_id TEXT, stripe_type TEXT, created DOUBLE PRECISION NOT NULL,
        recorded_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (buyer_uuid, version))""",
    "CREATE INDEX IF NOT EXISTS buyer_history_position ON buyer_history (buyer_uuid, position)",
]

INSERT_ROW = (
    "INSERT INTO buyer_history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)

# A customid's change log (outbound webhooks) is indexed beside its buyers' events, under this
# key: its history shows what the app was told, and when.
CHANGES_PREFIX = "changes:"

# Buyers whose app and key are remembered between events (a bounded cache, not the truth).
_BUYER_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class HistoryRow:
    """Where one buyer event is: enough to fetch it from the log."""

    position: int
    buyer_uuid: str
    version: int
    buyer_key: str


@dataclass(frozen=True)
class HistoryFilter:
    """Which events a page holds: after a position, `created` within [since, until], of types.

    `created` is Stripe's clock for Stripe events and the event's own timestamp for the others
    (registrations, links); `types` match a Stripe event type or a domain event topic.
    """

    after: int = 0
    limit: int = 100
    since: float | None = None
    until: float | None = None
    types: tuple[str, ...] = ()


class HistoryProjection:
    """One row per buyer event; called by a follower inside one transaction."""

    name = "buyer_history"
    tables = ("buyer_history",)
    indexes = ("buyer_history_position",)

    def __init__(self) -> None:
        self._buyers: dict[str, tuple[str, str]] = {}
        # The rows of each batch in progress not written yet, by its cursor (one instance may
        # serve a live follower and a rebuild's at once, each in its own transaction).
        self._pending: dict[Cursor, list[tuple[Any, ...]]] = {}

    def create_tables(self, cursor: Cursor) -> None:
        for statement in SCHEMA:
            cursor.execute(statement)

    @contextlib.contextmanager
    def batch(self, cursor: Cursor, events: Sequence[Any]) -> Iterator[None]:
        """`apply` events on `cursor` within this block: their rows are written in one
        statement when it ends (or before this projection reads its table). Should the block
        fail, nothing more is written (the transaction is rolled back anyway)."""
        pending: list[tuple[Any, ...]] = []
        self._pending[cursor] = pending
        try:
            yield
            _write(cursor, pending)
        finally:
            self._pending.pop(cursor, None)

    def apply(self, cursor: Cursor, position: int, event: Any) -> None:
        if isinstance(event, ChangeLog.PermissionsChanged):  # what the app was told, and when
            app_id, buyer_key = event.app_id, CHANGES_PREFIX + event.customid
        elif isinstance(event, Buyer.Event):
            app_id, buyer_key = self._buyer(cursor, str(event.originator_id), event)
        else:
            return
        uuid = str(event.originator_id)
        created, recorded = _times(event)
        stripe = isinstance(event, Buyer.StripeEventRecorded)
        row = (
            uuid,
            event.originator_version,
            position,
            app_id,
            buyer_key,
            type(event).TOPIC,
            event.stripe_event_id if stripe else None,
            event.stripe_type if stripe else None,
            created,
            recorded,
        )
        pending = self._pending.get(cursor)
        if pending is not None:
            pending.append(row)
        else:
            cursor.execute(INSERT_ROW, row)

    def _buyer(self, cursor: Cursor, uuid: str, event: Any) -> tuple[str, str]:
        """The buyer's app and key: from its registration (always its first event)."""
        if isinstance(event, Buyer.Created):
            found = (event.app_id, event.buyer_key)
        elif uuid in self._buyers:
            return self._buyers[uuid]
        else:
            _write(cursor, self._pending.get(cursor))  # the registration may be pending
            cursor.execute(
                "SELECT app_id, buyer_key FROM buyer_history WHERE buyer_uuid = ? AND version = 1",
                (uuid,),
            )
            row = cursor.fetchone()
            if row is None:
                raise LookupError(f"buyer {uuid} has events but no registration")
            found = (row[0], row[1])
        if len(self._buyers) >= _BUYER_CACHE_SIZE:
            self._buyers.clear()
        self._buyers[uuid] = found
        return found


def _write(cursor: Cursor, pending: list[tuple[Any, ...]] | None) -> None:
    """Write a batch's pending rows, in the order their events came."""
    if pending:
        cursor.executemany(INSERT_ROW, pending)
        pending.clear()


def _times(event: Any) -> tuple[float, float]:
    """(created, recorded): Stripe's clock and our receipt time, or the event's timestamp."""
    if isinstance(event, Buyer.StripeEventRecorded):
        return float(event.stripe_created), float(event.received_at)
    stamp = event.timestamp.timestamp()
    return stamp, stamp


def history_page(
    cursor: Cursor, buyer_uuids: Sequence[str], where: HistoryFilter
) -> list[HistoryRow]:
    """Up to `where.limit` rows of these buyers, oldest first by log position."""
    if not buyer_uuids:
        return []
    clauses = [f"buyer_uuid IN ({placeholders(buyer_uuids)})", "position > ?"]
    params: list[Any] = [*buyer_uuids, where.after]
    if where.since is not None:
        clauses.append("created >= ?")
        params.append(where.since)
    if where.until is not None:
        clauses.append("created <= ?")
        params.append(where.until)
    if where.types:
        marks = placeholders(where.types)
        clauses.append(f"(stripe_type IN ({marks}) OR topic IN ({marks}))")
        params += [*where.types, *where.types]
    cursor.execute(
        "SELECT position, buyer_uuid, version, buyer_key FROM buyer_history "
        f"WHERE {' AND '.join(clauses)} ORDER BY position LIMIT ?",
        (*params, where.limit),
    )
    return [HistoryRow(int(p), u, int(v), k) for p, u, v, k in cursor.fetchall()]
