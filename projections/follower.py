"""Following the event log: each event applied to a read model exactly once.

The follower reads the application's notification log after its tracked position, applies a batch
of events, and moves its tracking row in the same transaction as the rows it wrote. A crash
between batches loses nothing and repeats nothing; two followers racing (two processes) cannot
both apply a batch, because the tracking row only moves forward from the position they read.
SQLite has no push subscriptions, so this is a pull loop (`run_forever`), run by the projector
(`entitlements project`, which `serve` starts beside itself) or by a thread of the server.

Between batches the follower also derives the answers whose time has come (`derive_due`: the
projection's schedule), each chunk in a transaction that holds the same tracking row, so that
a batch and a chunk never interleave, whichever processes run them.

Readers never go through the follower: `ReadModelReader` reads the active generation from a
snapshot of its own, and never waits for a batch to be applied.

A follower follows the projection's active generation (see `projections/generations.py`), or one
fixed generation while that one is being rebuilt.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from projections.generations import (
    ACTIVE_GENERATION,
    FIRST_GENERATION,
    GenerationCursor,
    active_generation,
    renamed,
    tracking_name,
)
from projections.generations import SCHEMA as GENERATIONS_SCHEMA
from projections.store import Cursor, Row, ViewStore

log = logging.getLogger("entitlements.projections")

TRACKING_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS projection_tracking ("
    "name TEXT PRIMARY KEY, position BIGINT NOT NULL)"
)


class Projection(Protocol):
    name: str
    tables: tuple[str, ...]  # base names of its tables, renamed per generation
    indexes: tuple[str, ...]

    def create_tables(self, cursor: Cursor) -> None: ...

    # A projection may also name `ignored_topics`: events it never reads are not decoded.
    def apply(self, cursor: Cursor, position: int, event: Any) -> None: ...


# A projection may also offer:
# - `batch(cursor, events)`: a context manager within which the follower applies those events,
#   in order, on that cursor (one batch, one transaction), so that it can read what they need
#   at once and write rows together when the block ends;
# - `derive_due(cursor) -> int`: derive a chunk of what its schedule says is due; how many;
# - `seed(cursor, position)`: make due whatever an older database or a configuration change
#   left underived (once per start).


class TrackingConflict(RuntimeError):
    """Another follower applied this batch first (or the generation switched); go on."""


class ReadModelReader:
    """Read-only transactions on a projection's active generation (or a fixed one)."""

    def __init__(self, store: ViewStore, projection: Projection, generation: int | None = None):
        self.store = store
        self.projection = projection
        self.generation = generation
        self.created: set[int] = set()  # generations whose tables this process has made
        self._answering = FIRST_GENERATION  # the active generation, as last read
        self.create_tables(None)

    @contextlib.contextmanager
    def reading(self) -> Iterator[GenerationCursor]:
        """A snapshot of the generation that answers (read in the same snapshot: after a
        rebuild's switch, the next read is on the new one)."""
        while True:
            with self.store.reading() as raw:
                generation = self.generation or active_generation(raw, self.projection.name)
                if generation in self.created:
                    yield on_generation(raw, self.projection, generation)
                    return
            # Made before the snapshot that reads them: a snapshot sees the tables of its start.
            self.create_tables(generation)

    def rows(self, sql: str, params: Sequence[Any]) -> list[Row]:
        """One statement on the generation that answers, in a snapshot of its own: one round
        trip on PostgreSQL, where `reading()` takes four. The statement reads the generation
        too, so a rebuild's switch is seen by the next one. Its rows (NULLs for none)."""
        generation = self.generation or self._answering
        while True:
            if generation not in self.created:
                self.create_tables(generation)
            names = self.projection.tables + self.projection.indexes
            rows = self.store.rows(
                f"SELECT ({ACTIVE_GENERATION}), q.* FROM (SELECT 1) AS one "
                f"LEFT JOIN ({renamed(names, generation, sql)}) AS q ON TRUE",
                (self.projection.name, *params),
            )
            active = self.generation or (rows[0][0] or FIRST_GENERATION)
            if active == generation:
                return [row[1:] for row in rows]
            generation = self._answering = active

    def create_tables(self, generation: int | None, attempts: int = 5) -> None:
        """Several processes starting at once may race on CREATE TABLE IF NOT EXISTS
        (PostgreSQL can then raise a unique violation): the loser tries again."""
        for attempt in range(attempts):
            try:
                with self.store.transaction() as raw:
                    raw.execute(TRACKING_SCHEMA)
                    raw.execute(GENERATIONS_SCHEMA)
                    if generation is not None:
                        self.projection.create_tables(
                            on_generation(raw, self.projection, generation)
                        )
                if generation is not None:
                    self.created.add(generation)
                return
            except Exception:
                if attempt == attempts - 1:
                    raise

    def position(self) -> int:
        """The position up to which the read model has applied the log."""
        with self.reading() as cursor:
            return _tracked(cursor, tracking_name(self.projection.name, cursor.generation))


class Notifications(Protocol):
    """Where a log's notifications are read (the eventsourcing library's recorder)."""

    def max_notification_id(self) -> int | None: ...

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Any]: ...


class EventDecoder(Protocol):
    """How a stored notification becomes a domain event (the library's mapper)."""

    def to_domain_event(self, stored: Any) -> Any: ...


class FollowedLog(Protocol):
    """The log a follower reads: its notifications, and how to decode them. The event store
    (`adapters/storage/eventstore.EventLog`, an eventsourcing Application) is one."""

    @property
    def recorder(self) -> Notifications: ...

    @property
    def mapper(self) -> EventDecoder: ...


class Follower:
    def __init__(
        self,
        log: FollowedLog,
        store: ViewStore,
        projection: Projection,
        batch_size: int = 500,
        generation: int | None = None,  # None: follow the active generation
        stop_at: int | None = None,  # apply nothing after this position (a bounded replay)
    ) -> None:
        self.log = log
        self.store = store
        self.projection = projection
        self.batch_size = batch_size
        self.generation = generation
        self.stop_at = stop_at
        self.reader = ReadModelReader(store, projection, generation)
        self.applied = 0  # events this follower's batches committed, in this process
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def writing(self) -> Iterator[GenerationCursor]:
        """A write transaction on the generation this follower writes."""
        with self.store.transaction() as raw:
            generation = self.generation or active_generation(raw, self.projection.name)
            cursor = on_generation(raw, self.projection, generation)
            fresh = generation not in self.reader.created
            if fresh:
                self.projection.create_tables(cursor)
            yield cursor
        if fresh:  # once committed: readers may rely on the tables from now on
            self.reader.created.add(generation)

    def reading(self) -> contextlib.AbstractContextManager[GenerationCursor]:
        """A read-only snapshot of the generation this follower writes."""
        return self.reader.reading()

    def position(self) -> int:
        return self.reader.position()

    def lag(self) -> int:
        """How many notifications the read model is behind the log (by id)."""
        return max(0, (self.log.recorder.max_notification_id() or 0) - self.position())

    def catch_up(
        self, on_batch: Callable[[int, int], None] | None = None, until: int | None = None
    ) -> int:
        """Apply everything recorded so far (or up to position `until` at least); returns how
        many events were applied. `on_batch(count, position)` is called after each committed
        batch (progress bars)."""
        applied = 0
        with self._lock:
            position = -1
            while until is None or position < until:
                try:
                    count, position = self._apply_next_batch()
                except TrackingConflict:
                    continue
                applied += count
                self.applied += count
                if count and on_batch:
                    on_batch(count, position)
                if count < self.batch_size:
                    break
        return applied

    def _apply_next_batch(self) -> tuple[int, int]:
        with self.reading() as cursor:
            generation, start = cursor.generation, _tracked(cursor, self._tracking_name(cursor))
        notifications = self.log.recorder.select_notifications(
            start=start, limit=self.batch_size, stop=self.stop_at, inclusive_of_start=False
        )
        if not notifications:
            return 0, start
        with self.writing() as cursor:
            name = self._tracking_name(cursor)
            if cursor.generation != generation or _tracked(cursor, name) != start:
                raise TrackingConflict(name)
            ignored = getattr(self.projection, "ignored_topics", frozenset())
            events = [  # receipts are not even decoded
                (notification.id, self.log.mapper.to_domain_event(notification))
                for notification in notifications
                if notification.topic not in ignored
            ]
            batch = getattr(self.projection, "batch", None)
            scope = batch(cursor, [e for _, e in events]) if batch else contextlib.nullcontext()
            with scope:
                for position, event in events:
                    self.projection.apply(cursor, position, event)
            _track(cursor, name, start, notifications[-1].id)
        return len(notifications), notifications[-1].id

    def derive_due(self, chunk: int | None = None) -> int:
        """Derive what the projection's schedule says is due, a chunk per transaction (of the
        projection's size, or `chunk` rows); how many were derived."""
        derive = getattr(self.projection, "derive_due", None)
        limit = {} if chunk is None else {"limit": chunk}
        total = 0
        while derive is not None:
            with self._lock, self.holding_position() as cursor:
                count = 0 if cursor is None else derive(cursor, **limit)
            total += count
            if not count:
                break
        return total

    def seed(self) -> bool:
        """Make due what an older database or a configuration change left underived; False
        when it could not be said yet (nothing applied yet: then on a later round)."""
        seed = getattr(self.projection, "seed", None)
        if seed is None:
            return True
        with self._lock, self.holding_position() as cursor:
            if cursor is None:
                return False
            seed(cursor, _tracked(cursor, self._tracking_name(cursor)))
            return True

    @contextlib.contextmanager
    def holding_position(self) -> Iterator[GenerationCursor | None]:
        """A write transaction that holds the tracking row (no batch can commit meanwhile,
        in any process); None when nothing was ever applied (nothing can be due)."""
        with self.writing() as cursor:
            name = self._tracking_name(cursor)
            cursor.execute(
                "UPDATE projection_tracking SET position = position WHERE name = ?", (name,)
            )
            yield cursor if cursor.rowcount == 1 else None

    def _tracking_name(self, cursor: GenerationCursor) -> str:
        return tracking_name(self.projection.name, cursor.generation)

    def wait_for(
        self, position: int, timeout: float, also: Callable[[], bool] | None = None
    ) -> bool:
        """Wait until the read model has applied the log up to `position` (and `also()` holds,
        when given): a write's own effects, before its caller answers. False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self.poke()
            if self.position() >= position and (also is None or also()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def poke(self) -> None:
        """Something was written: wake the background loop (in this process)."""
        self._wake.set()

    def run_forever(self, poll_interval: float = 0.25, linger: float = 0.01) -> None:
        """Follow until stopped: apply what was recorded, then derive what is due. After a
        wake-up it lingers a moment, so that a burst of webhooks is projected in one
        transaction rather than one each."""
        seeded = False
        while not self._stop.is_set():
            try:
                self.catch_up()
                seeded = seeded or self.seed()
                self.derive_due()
            except Exception:  # keep following; the next round retries the same batch
                log.exception("projection %s failed; retrying", self.projection.name)
                self._stop.wait(1.0)
            if self._wake.wait(poll_interval):
                self._stop.wait(linger)
            self._wake.clear()

    def start_background(self, poll_interval: float = 0.25) -> threading.Thread:
        """Run `run_forever` in a thread (again after `stop`)."""
        self._stop.clear()
        thread = threading.Thread(
            target=self.run_forever, args=(poll_interval,), name=self.projection.name, daemon=True
        )
        thread.start()
        self._thread = thread
        return thread

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background loop, and wait for the batch it may be applying."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)


def on_generation(raw: Cursor, projection: Projection, generation: int) -> GenerationCursor:
    return GenerationCursor(raw, projection.tables + projection.indexes, generation)


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
