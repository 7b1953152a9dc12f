"""Following the event log: each event applied to a read model exactly once.

The follower reads the application's notification log after its tracked position, applies a batch
of events, and moves its tracking row in the same transaction as the rows it wrote. A crash
between batches loses nothing and repeats nothing; two followers racing (two processes) cannot
both apply a batch, because the tracking row only moves forward from the position they read.
SQLite has no push subscriptions, so this is a pull loop: `catch_up()` on demand (after a write,
before a read) and `run_forever()` in a worker thread or process.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from adapters.eventstore import EventLog
from projections.store import Cursor, ViewStore

log = logging.getLogger("entitlements.projections")

TRACKING_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS projection_tracking ("
    "name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
)


class Projection(Protocol):
    name: str

    def create_tables(self, cursor: Cursor) -> None: ...
    def apply(self, cursor: Cursor, position: int, event: Any) -> None: ...


class TrackingConflict(RuntimeError):
    """Another follower applied this batch first; re-read the position and go on."""


class Follower:
    def __init__(
        self, log: EventLog, store: ViewStore, projection: Projection, batch_size: int = 500
    ) -> None:
        self.log = log
        self.store = store
        self.projection = projection
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        with store.transaction() as cursor:
            cursor.execute(TRACKING_SCHEMA)
            projection.create_tables(cursor)

    def position(self) -> int:
        with self.store.transaction() as cursor:
            return _tracked(cursor, self.projection.name)

    def lag(self) -> int:
        """How many notifications the read model is behind the log (by id)."""
        return max(0, (self.log.recorder.max_notification_id() or 0) - self.position())

    def catch_up_if_behind(self) -> None:
        """Read your writes: apply whatever was recorded before this call."""
        if self.lag() > 0:
            self.catch_up()

    def catch_up(self) -> int:
        """Apply everything recorded so far; returns how many events were applied."""
        applied = 0
        with self._lock:
            while True:
                try:
                    count = self._apply_next_batch()
                except TrackingConflict:
                    continue
                applied += count
                if count < self.batch_size:
                    return applied

    def _apply_next_batch(self) -> int:
        start = self.position()
        notifications = self.log.recorder.select_notifications(
            start=start, limit=self.batch_size, inclusive_of_start=False
        )
        if not notifications:
            return 0
        with self.store.transaction() as cursor:
            if _tracked(cursor, self.projection.name) != start:
                raise TrackingConflict(self.projection.name)
            for notification in notifications:
                event = self.log.mapper.to_domain_event(notification)
                self.projection.apply(cursor, notification.id, event)
            _track(cursor, self.projection.name, start, notifications[-1].id)
        return len(notifications)

    def poke(self) -> None:
        """Something was written: wake the background loop."""
        self._wake.set()

    def run_forever(self, poll_interval: float = 0.5) -> None:
        while not self._stop.is_set():
            try:
                self.catch_up()
            except Exception:  # keep following; the next round retries the same batch
                log.exception("projection %s failed; retrying", self.projection.name)
                self._stop.wait(1.0)
            self._wake.wait(poll_interval)
            self._wake.clear()

    def start_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.run_forever, name=self.projection.name, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


def _tracked(cursor: Cursor, name: str) -> int:
    cursor.execute("SELECT position FROM projection_tracking WHERE name = ?", (name,))
    row = cursor.fetchone()
    return int(row[0]) if row else 0


def _track(cursor: Cursor, name: str, start: int, end: int) -> None:
    if start == 0:
        cursor.execute(
            "INSERT INTO projection_tracking (name, position) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET position = excluded.position "
            "WHERE projection_tracking.position = 0",
            (name, end),
        )
    else:
        cursor.execute(
            "UPDATE projection_tracking SET position = ? WHERE name = ? AND position = ?",
            (end, name, start),
        )
    if cursor.rowcount != 1:  # another follower moved the position since we read it
        raise TrackingConflict(name)
