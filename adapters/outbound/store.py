"""Deliveries: one row per change and endpoint, in the read models' database.

Every host sees the same rows (PostgreSQL), so a change is sent once per endpoint whichever
host's worker claims it: a claim takes rows `FOR UPDATE SKIP LOCKED` (SQLite has one writer at
a time) and leases them for longer than a POST may take. A worker killed mid-flight leaves its
lease to expire, and the change is sent again, with the same `id` and `sequence`.

In order per customid and endpoint: a row is claimable only when no earlier change of the same
customid for the same endpoint is still pending or failed (in flight included: it is pending).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from adapters.config import Endpoint
from projections.announcements import SCHEMA as CHANGES_SCHEMA
from projections.store import ViewStore, placeholders

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS deliveries (
        id TEXT PRIMARY KEY, app_id TEXT NOT NULL, url TEXT NOT NULL,
        customid TEXT NOT NULL, sequence BIGINT NOT NULL, change_id TEXT NOT NULL,
        status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL, retry_since DOUBLE PRECISION NOT NULL,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        last_attempt_at DOUBLE PRECISION, last_status INTEGER, last_error TEXT,
        delivered_at DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS deliveries_waiting ON deliveries (app_id, url, next_attempt_at) "
    "WHERE status IN ('pending', 'failed')",
    # Each customid's earliest waiting change (the claim's subquery).
    "CREATE INDEX IF NOT EXISTS deliveries_head ON deliveries (app_id, url, customid, sequence) "
    "WHERE status IN ('pending', 'failed')",
    "CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (app_id, status, created_at)",
]
STATUSES = ("pending", "failed", "dead", "delivered")
WAITING = "('pending', 'failed')"

# The earliest waiting change of a customid is the one its endpoint may be sent; a scalar
# subquery per candidate (an index probe with all three keys, whatever the statistics say) and
# candidates in `deliveries_waiting` order, so that the scan stops once it has enough.
CLAIMABLE = f"""SELECT d.id FROM deliveries d
    WHERE d.app_id = ? AND d.url = ? AND d.status IN {WAITING}
      AND d.next_attempt_at <= ? AND d.lease_until <= ?
      AND d.sequence = (SELECT e.sequence FROM deliveries e
                        WHERE e.app_id = d.app_id AND e.url = d.url
                          AND e.customid = d.customid AND e.status IN {WAITING}
                        ORDER BY e.app_id, e.url, e.customid, e.sequence LIMIT 1)
    ORDER BY d.next_attempt_at LIMIT ?"""

COLUMNS = (
    "id, change_id, customid, sequence, url, status, attempts, created_at, next_attempt_at, "
    "last_attempt_at, last_status, last_error, delivered_at"
)


@dataclass(frozen=True)
class Claimed:
    id: str
    app_id: str
    url: str
    customid: str
    sequence: int
    attempts: int  # before this one
    retry_since: float  # when its 3 days of retries started
    body: str  # the permissions.changed payload, exactly as on the change log


@dataclass(frozen=True)
class Outcome:
    """What an attempt gave: delivered, or the next attempt's time (None: dead)."""

    delivery_id: str
    at: float
    status: int | None  # the endpoint's HTTP status, None when none came
    error: str | None  # None: delivered
    next_attempt_at: float | None = None


def delivery_id(change_id: str, url: str) -> str:
    return "dl_" + uuid5(NAMESPACE_URL, f"/deliveries/{change_id}/{url}").hex


class DeliveryStore:
    def __init__(self, views: ViewStore, attempts: int = 5) -> None:
        self.views = views
        self.skip_locked = " FOR UPDATE SKIP LOCKED" if views.remote else ""
        self._create_tables(attempts)

    def _create_tables(self, attempts: int) -> None:
        """Processes starting at once may race on CREATE ... IF NOT EXISTS (PostgreSQL then
        raises a unique violation): the loser tries again."""
        for attempt in range(attempts):
            try:
                with self.views.transaction() as cursor:
                    for statement in CHANGES_SCHEMA + SCHEMA:
                        cursor.execute(statement)
                return
            except Exception:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))

    # --- from the change log to deliveries ------------------------------------------------

    def unappended(self, limit: int) -> list[tuple[str, str, int, str]]:
        """Changes recorded by the projector and not yet on the event log, oldest first."""
        return [
            (a, c, int(s), body)
            for a, c, s, body in self.views.rows(
                "SELECT app_id, customid, sequence, body FROM permission_changes "
                "WHERE appended = 0 ORDER BY app_id, customid, sequence LIMIT ?",
                (limit,),
            )
        ]

    def appended(
        self,
        changes: Iterable[tuple[str, str, int, str]],
        endpoints: Mapping[str, Sequence[Endpoint]],
        now: float,
    ) -> int:
        """Mark these changes as on the event log and make their deliveries (once, whoever
        does it first). How many deliveries were made."""
        marks, rows = [], []
        for app_id, customid, sequence, change_id in changes:
            marks.append((app_id, customid, sequence))
            for endpoint in endpoints.get(app_id, ()):
                rows.append(
                    (
                        delivery_id(change_id, endpoint.url),
                        app_id,
                        endpoint.url,
                        customid,
                        sequence,
                        change_id,
                        "pending",
                        now,
                        now,
                        now,
                    )
                )
        with self.views.transaction() as cursor:
            cursor.executemany(
                "UPDATE permission_changes SET appended = 1 "
                "WHERE app_id = ? AND customid = ? AND sequence = ?",
                marks,
            )
            if rows:
                cursor.executemany(
                    "INSERT INTO deliveries (id, app_id, url, customid, sequence, change_id, "
                    "status, created_at, retry_since, next_attempt_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    rows,
                )
        return len(rows)

    # --- the worker's side ------------------------------------------------------------------

    def claim(self, app_id: str, url: str, now: float, lease: float, limit: int) -> list[Claimed]:
        """Lease up to `limit` deliveries of this endpoint that may be sent now."""
        params = (app_id, url, now, now, limit)
        # SQLite: look first, so that an idle endpoint never takes the one write lock.
        if not self.views.remote and not self.views.rows(CLAIMABLE, params):
            return []
        with self.views.transaction() as cursor:
            cursor.execute(CLAIMABLE + self.skip_locked, params)
            ids = [row[0] for row in cursor.fetchall()]
            if not ids:
                return []
            cursor.execute(
                f"UPDATE deliveries SET lease_until = ? WHERE id IN ({placeholders(ids)})",
                (now + lease, *ids),
            )
            cursor.execute(
                "SELECT d.id, d.customid, d.sequence, d.attempts, d.retry_since, c.body "
                "FROM deliveries d JOIN permission_changes c ON c.app_id = d.app_id "
                "AND c.customid = d.customid AND c.sequence = d.sequence "
                f"WHERE d.id IN ({placeholders(ids)}) ORDER BY d.customid, d.sequence",
                ids,
            )
            return [
                Claimed(i, app_id, url, c, int(s), int(n), float(since), body)
                for i, c, s, n, since, body in cursor.fetchall()
            ]

    def record(self, outcomes: Sequence[Outcome]) -> None:
        """What the attempts gave, in one transaction; each lease ends."""
        rows = [_outcome_row(o) for o in outcomes]
        if not rows:
            return
        with self.views.transaction() as cursor:
            cursor.executemany(
                "UPDATE deliveries SET status = ?, attempts = attempts + 1, last_attempt_at = ?, "
                "last_status = ?, last_error = ?, next_attempt_at = ?, delivered_at = ?, "
                "lease_until = 0 WHERE id = ?",
                rows,
            )

    # --- the admin's side -------------------------------------------------------------------

    def listing(self, app_id: str, status: str | None, limit: int) -> list[dict[str, Any]]:
        """The app's deliveries (of one status), newest first."""
        where, params = "app_id = ?", [app_id]
        if status is not None:
            where, params = where + " AND status = ?", [*params, status]
        rows = self.views.rows(
            f"SELECT {COLUMNS} FROM deliveries WHERE {where} "
            "ORDER BY created_at DESC, customid, sequence DESC LIMIT ?",
            (*params, limit),
        )
        return [_listed(row) for row in rows]

    def redeliver(self, app_id: str, delivery: str, now: float) -> dict[str, Any] | None:
        """Send again as soon as possible (a dead or delivered one too), with 3 more days of
        retries. None: the app has no such delivery."""
        with self.views.transaction() as cursor:
            cursor.execute(
                "UPDATE deliveries SET status = 'pending', attempts = 0, retry_since = ?, "
                "next_attempt_at = ? WHERE id = ? AND app_id = ?",
                (now, now, delivery, app_id),
            )
            if cursor.rowcount != 1:
                return None
            cursor.execute(f"SELECT {COLUMNS} FROM deliveries WHERE id = ?", (delivery,))
            row = cursor.fetchone()
        return None if row is None else _listed(row)

    def unfinished(self) -> dict[tuple[str, str], int]:
        """How many deliveries of each app are pending, failed or dead (for /metrics)."""
        rows = self.views.rows(
            "SELECT app_id, status, COUNT(*) FROM deliveries WHERE status <> 'delivered' "
            "GROUP BY app_id, status",
            (),
        )
        return {(app_id, status): int(count) for app_id, status, count in rows}

    def waiting(self) -> int:
        """Deliveries not yet delivered nor dead, of every app (tests, metrics)."""
        rows = self.views.rows(f"SELECT COUNT(*) FROM deliveries WHERE status IN {WAITING}", ())
        return int(rows[0][0])


def _outcome_row(outcome: Outcome) -> tuple[Any, ...]:
    if outcome.error is None:
        status, next_at, delivered = "delivered", outcome.at, outcome.at
    elif outcome.next_attempt_at is None:
        status, next_at, delivered = "dead", outcome.at, None
    else:
        status, next_at, delivered = "failed", outcome.next_attempt_at, None
    return (
        status,
        outcome.at,
        outcome.status,
        outcome.error,
        next_at,
        delivered,
        outcome.delivery_id,
    )


def _listed(row: Sequence[Any]) -> dict[str, Any]:
    (
        id_,
        change,
        customid,
        sequence,
        url,
        status,
        attempts,
        created,
        next_at,
        last_at,
        last_status,
        last_error,
        delivered,
    ) = row
    waiting = status in ("pending", "failed")
    return {
        "id": id_,
        "changeId": change,
        "customid": customid,
        "sequence": int(sequence),
        "url": url,
        "status": status,
        "attempts": int(attempts),
        "createdAt": _epoch(created),
        "nextAttemptAt": _epoch(next_at) if waiting else None,
        "lastAttemptAt": _epoch(last_at),
        "lastStatus": last_status,
        "lastError": last_error,
        "deliveredAt": _epoch(delivered),
    }


def _epoch(value: Any) -> int | None:
    return None if value is None else int(value)
