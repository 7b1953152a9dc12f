"""Following the event log: each event applied to a read model exactly once.

The follower reads the application's notification log after its tracked position, applies a batch
of events, and moves its tracking row in the same transaction as the rows it wrote. A crash
between batches loses nothing and repeats nothing; two followers racing (two processes) cannot
both apply a batch, because the tracking row only moves forward from the position they read.
SQLite has no push subscriptions, so this is a pull loop: `catch_up()` on demand (after a write,
before a read) and `run_forever()` in a worker thread or process; or, in a server whose events
another process applies (`entitlements project`, which `serve` starts), `run_observing()`.

A follower follows the projection's active generation (see `projections/generations.py`), or one
fixed generation while that one is being rebuilt.

What was applied is reported to `on_applied(touched, start, end)` after each batch commits:
`touched` lists what the projection's `apply` returned for the events in (start, end] (what they
may have changed; None from `apply`: nothing a reader of changes cares about). A range another
process applied (the tracked position is beyond the end of what this follower reported) is
judged by the projection's optional `touched_elsewhere(cursor, notifications)` from the rows it
left, or else reported with `touched` None: unknown, so everything up to its end. The answer
cache listens (`projections/answers.py`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from adapters.eventstore import EventLog
from projections.generations import SCHEMA as GENERATIONS_SCHEMA
from projections.generations import GenerationCursor, active_generation, tracking_name
from projections.store import Cursor, ViewStore

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

    # Returns what the event may have changed, for `Follower.on_applied` (None: nothing).
    # A projection may also name `ignored_topics`: events it never reads are not decoded.
    def apply(self, cursor: Cursor, position: int, event: Any) -> Any: ...


# A projection may also offer `batch(cursor, events)`: a context manager within which the
# follower applies those events, in order, on that cursor (one batch, one transaction), so that
# it can read what they need at once and write rows together when the block ends.


# on_applied(touched, start, end): events in (start, end] were committed; touched None: unknown.
AppliedListener = Callable[[Sequence[Any] | None, int, int], None]
# A longer range applied by another process is reported as unknown rather than read again
# (after a restart, say: the whole log).
FOREIGN_RANGE_JUDGED = 2_000


class TrackingConflict(RuntimeError):
    """Another follower applied this batch first (or the generation switched); go on."""


class Follower:
    def __init__(
        self,
        log: EventLog,
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
        self._created: set[int] = set()
        self._applied = 0  # the newest position this process has seen applied
        # (generation, position) of the read model as last read or written here, and when:
        # what cached answers are stamped with (see `settled`).
        self.observed: tuple[int, int] = (0, 0)
        self.observed_at = 0.0
        self._observed_lock = threading.Lock()
        self.on_applied: AppliedListener | None = None
        # Whether the listener needs to know what a range applied elsewhere touched (else it
        # is reported as unknown, without reading the rows it left): e.g. nothing is cached.
        self.wants_touched: Callable[[], bool] = lambda: True
        # The end of the last range reported to `on_applied`: a tracked position beyond it was
        # applied by another process. Only the follower moves it (under `_lock`), never a query
        # thread's `observe`, which may see a batch committed here but not reported yet.
        self._reported = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._look_now = threading.Event()  # a read saw a position not reported yet
        self._stop = threading.Event()
        self._create_tables()

    def _create_tables(self, attempts: int = 5) -> None:
        # Several processes starting at once may race on CREATE TABLE IF NOT EXISTS
        # (PostgreSQL can then raise a unique violation): the loser tries again.
        for attempt in range(attempts):
            try:
                with self.store.transaction() as cursor:
                    cursor.execute(TRACKING_SCHEMA)
                    cursor.execute(GENERATIONS_SCHEMA)
                with self.reading():
                    return
            except Exception:
                if attempt == attempts - 1:
                    raise
                self._created.clear()

    @contextlib.contextmanager
    def reading(self) -> Iterator[GenerationCursor]:
        """A transaction on the generation this follower writes (the active one by default)."""
        with self.store.transaction() as raw:
            yield self._on_generation(raw)

    def _on_generation(self, raw: Cursor) -> GenerationCursor:
        generation = self.generation or active_generation(raw, self.projection.name)
        cursor = GenerationCursor(raw, self.projection.tables + self.projection.indexes, generation)
        if generation not in self._created:
            self.projection.create_tables(cursor)
            self._created.add(generation)
        return cursor

    def _tracking_name(self, cursor: GenerationCursor) -> str:
        return tracking_name(self.projection.name, cursor.generation)

    def position(self) -> int:
        with self.reading() as cursor:
            return self.observe(cursor)[1]

    def lag(self) -> int:
        """How many notifications the read model is behind the log (by id)."""
        return max(0, (self.log.recorder.max_notification_id() or 0) - self.position())

    def settled(self, max_age: float) -> tuple[int, int] | None:
        """The read model's (generation, position) as this process last saw it and reported
        it, if it saw it within `max_age` seconds; else None (a cached answer could then be
        stale). No query: the background loop keeps it current.

        The position is no further than what was reported (`on_applied`): a query thread may
        have read further, into a batch not reported yet (another process's projector commits
        one every few milliseconds under load), and a cached answer judged at that position
        would be refused until the report came, though no floor can be known there yet. Such
        a batch counts as not seen yet, like any other process's write until this follower
        sees it. (This process's own writes not projected yet are the answer cache's to
        weigh: it is told of each before it is saved, and serves nothing they may touch.)"""
        if time.monotonic() - self.observed_at > max_age:
            return None
        generation, position = self.observed
        return generation, min(position, self._reported)

    def observe(self, cursor: GenerationCursor) -> tuple[int, int]:
        """The (generation, position) of the read model as `cursor`'s transaction sees it."""
        position = _tracked(cursor, self._tracking_name(cursor))
        self._observe(cursor.generation, position)
        return cursor.generation, position

    def _observe(self, generation: int, position: int) -> None:
        with self._observed_lock:  # never backwards: threads may report what they read late
            self._applied = max(self._applied, position)
            if position >= self.observed[1]:
                self.observed = (generation, position)
                self.observed_at = time.monotonic()
        if position > self._reported:  # until it is, cached answers are refused (answers.py)
            self._look_now.set()

    def catch_up_if_behind(self) -> None:
        """Read your writes: apply whatever this process recorded before this call. Costs no
        query when the read model already holds this process's newest write; writes of other
        processes arrive through the background loop."""
        target = self.log.high_water
        if target <= self._applied:
            return
        if self.lag() > 0:
            self.catch_up(until=target)

    def catch_up(
        self, on_batch: Callable[[int, int], None] | None = None, until: int | None = None
    ) -> int:
        """Apply everything recorded so far (or up to position `until` at least); returns how
        many events were applied. `on_batch(count, position)` is called after each committed
        batch (progress bars). Reads waiting for their writes share one catch-up: whoever
        holds the lock applies, and the others find their position applied."""
        applied = 0
        with self._lock:
            while until is None or self._applied < until:
                try:
                    count, position = self._apply_next_batch()
                except TrackingConflict:
                    continue
                applied += count
                if count and on_batch:
                    on_batch(count, position)
                if count < self.batch_size:
                    break
        return applied

    def _apply_next_batch(self) -> tuple[int, int]:
        with self.reading() as cursor:
            generation, start = cursor.generation, _tracked(cursor, self._tracking_name(cursor))
        self._report_foreign(start)
        notifications = self.log.recorder.select_notifications(
            start=start, limit=self.batch_size, stop=self.stop_at, inclusive_of_start=False
        )
        if not notifications:
            self._observe(generation, start)
            return 0, start
        touched: list[Any] = []
        with self.reading() as cursor:
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
                    change = self.projection.apply(cursor, position, event)
                    if change is not None:
                        touched.append(change)
            _track(cursor, name, start, notifications[-1].id)
        end = notifications[-1].id
        self._report(touched, start, end)  # before `_observe`: fewer answers refused meanwhile
        self._observe(generation, end)
        return len(notifications), end

    def _judge_foreign(self, start: int, end: int) -> list[Any] | None:
        """What another process's events in (start, end] touched, from the rows they left and
        their topics (nothing is decoded); None when that cannot be said (unknown)."""
        judge = getattr(self.projection, "touched_elsewhere", None)
        if judge is None or self.on_applied is None or end - start > FOREIGN_RANGE_JUDGED:
            return None
        if not self.wants_touched():
            return None
        try:
            notifications = self.log.heads(start, end)
            with self.reading() as cursor:
                if _tracked(cursor, self._tracking_name(cursor)) < end:
                    return None  # these rows do not hold the range (the generation switched)
                return list(judge(cursor, notifications))
        except Exception:
            log.exception("judging a range of %s applied elsewhere failed", self.projection.name)
            return None

    def _report(self, touched: Sequence[Any] | None, start: int, end: int) -> None:
        """Tell the listener what (start, end] touched. Should it fail, the range stays
        unreported, and the next batch reports it as one applied elsewhere."""
        if self.on_applied is not None:
            try:
                self.on_applied(touched, start, end)
            except Exception:
                log.exception("reporting applied events of %s failed", self.projection.name)
                return
        self._reported = max(self._reported, end)

    def poke(self) -> None:
        """Something was written: wake the background loop."""
        self._wake.set()

    def run_forever(self, poll_interval: float = 0.25, linger: float = 0.05) -> None:
        """Follow until stopped. After a wake-up it lingers a moment, so that a burst of
        webhooks is projected in one transaction rather than one each (a reader never waits
        for this: reads catch up first)."""
        while not self._stop.is_set():
            try:
                self.catch_up()
            except Exception:  # keep following; the next round retries the same batch
                log.exception("projection %s failed; retrying", self.projection.name)
                self._stop.wait(1.0)
            if self._wake.wait(poll_interval):
                self._stop.wait(linger)
            self._wake.clear()

    def start_background(self, poll_interval: float = 0.25) -> threading.Thread:
        return self._start(self.run_forever, poll_interval)

    def start_observing(self) -> threading.Thread:
        return self._start(self.run_observing)

    def _start(self, loop: Callable[..., None], *args: Any) -> threading.Thread:
        thread = threading.Thread(target=loop, args=args, name=self.projection.name, daemon=True)
        thread.start()
        return thread

    def run_observing(self, poll_interval: float = 0.05, stall_after: float = 2.0) -> None:
        """Follow while another process applies the events (`entitlements project`, which
        `serve` starts beside itself): report each range it applied to `on_applied` and keep
        `observed` current, so that cached answers stay served; apply nothing, except when
        the read model has not moved for `stall_after` seconds while the log is ahead (that
        process is gone or stuck: then this one catches up itself). Reads still catch up for
        this process's own writes first (`catch_up_if_behind`)."""
        position, moved_at = -1, time.monotonic()
        while not self._stop.is_set():
            try:
                seen = self.look()
                if seen != position:
                    position, moved_at = seen, time.monotonic()
                elif time.monotonic() - moved_at > stall_after and self.lag() > 0:
                    log.warning(
                        "%s has not moved for %.0f s: applying here",
                        self.projection.name,
                        stall_after,
                    )
                    self.catch_up()
            except Exception:
                log.exception("observing %s failed; retrying", self.projection.name)
                self._stop.wait(1.0)
            # Not woken by writes (the projector applies them), but by a read that saw what
            # the projector applied before this loop reported it.
            self._look_now.wait(poll_interval)
            self._look_now.clear()

    def look(self) -> int:
        """Report what another process applied since this one last reported, and observe the
        read model's position (returned)."""
        with self._lock:
            with self.reading() as cursor:
                generation = cursor.generation
                position = _tracked(cursor, self._tracking_name(cursor))
            self._report_foreign(position)
            self._observe(generation, position)
        return position

    def _report_foreign(self, position: int) -> None:
        """Under `_lock`: the read model is at `position`; what lies between the last report and
        it, another process applied (not seen here): report it, judged from the rows left."""
        if position > self._reported:
            self._report(self._judge_foreign(self._reported, position), self._reported, position)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._look_now.set()


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
