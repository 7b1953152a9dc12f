"""Rebuilding a read model from the first event, without downtime.

The new generation is filled in large batches (one transaction each, constant memory) while the
live one keeps answering queries and following new webhooks. A projection with answers derived
from its rows (`bulk`, `seed`, `derive_due`: the grants) derives them once everyone's rows are
in, each answer once, rather than once per batch. Once the new generation has caught up, it
becomes the active one. The generation before the live one is dropped first: by then nothing can
still be reading it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from domain.aggregates import AppCatalogue, Buyer, catalogue_id
from projections.follower import TRACKING_SCHEMA, FollowedLog, Follower, Projection, on_generation
from projections.generations import SCHEMA as GENERATIONS_SCHEMA
from projections.generations import (
    activate,
    active_generation,
    drop_generation,
    suffix,
    tracking_name,
)
from projections.parallel_derive import derive_everyone
from projections.store import Cursor, ViewStore

REBUILD_BATCH = 5000  # events per transaction: fewer commits (and checkpoints) than live


class RebuildRaced(RuntimeError):
    """Another rebuild switched generations first; nothing was switched by this one."""


@dataclass(frozen=True)
class RebuildReport:
    projection: str
    old_generation: int
    new_generation: int
    events: int
    seconds: float
    deriving_seconds: float = 0.0  # of which deriving every answer after the bulk pass


def rebuild(
    log: FollowedLog,
    store: ViewStore,
    projection: Projection,
    on_batch: Callable[[int, int], None] | None = None,
    batch_size: int = REBUILD_BATCH,
    app_id: str | None = None,
    workers: int | None = None,
) -> RebuildReport:
    """Rebuild every app's rows, or only `app_id`'s: then the other apps' rows are copied
    from the live generation as they stood at its tracked position P, the app's events up to P
    are replayed from the first, and everything after P is applied as usual. `workers`:
    processes deriving the answers after the bulk pass (default: one per core)."""
    started = time.monotonic()
    old, new = _prepare(store, projection)
    follower = Follower(log, store, projection, batch_size=batch_size, generation=new)
    follower.reader.create_tables(new)
    events = 0
    bulk = getattr(projection, "bulk", lambda generation: contextlib.nullcontext())
    with bulk(new):
        if app_id is not None:
            copied_up_to = _copy_other_apps(store, projection, old, new, app_id)
            only_app = OnlyApp(projection, app_id)
            bounded = Follower(
                log, store, only_app, batch_size=batch_size, generation=new, stop_at=copied_up_to
            )
            events += bounded.catch_up(on_batch)
        events += follower.catch_up(on_batch)
    follower.seed()  # every answer of the new rows is due now ...
    deriving = time.monotonic()
    derive_everyone(follower, store, workers)  # ... and derived, each once, on every core
    deriving = time.monotonic() - deriving
    events += follower.catch_up(on_batch)  # what arrived meanwhile, derived batch by batch
    with store.transaction() as cursor:
        if not activate(cursor, projection.name, old, new):
            raise RebuildRaced(projection.name)
        activated = getattr(projection, "activated", None)  # with the switch, or not at all
        if activated is not None:
            activated(on_generation(cursor, projection, new))
    seconds = time.monotonic() - started
    return RebuildReport(projection.name, old, new, events, seconds, deriving)


def _copy_other_apps(
    store: ViewStore, projection: Projection, old: int, new: int, app_id: str
) -> int:
    """Copy the rows of every other app from the live generation into the new one; returns the
    live generation's position P, which the copy reflects exactly: the no-op UPDATE locks the
    live tracking row, so the live follower cannot commit a batch meanwhile."""
    live = tracking_name(projection.name, old)
    with store.transaction() as cursor:
        cursor.execute("UPDATE projection_tracking SET position = position WHERE name = ?", (live,))
        cursor.execute("SELECT position FROM projection_tracking WHERE name = ?", (live,))
        row = cursor.fetchone()
        position = int(row[0]) if row else 0
        for table in projection.tables:
            cursor.execute(
                f"INSERT INTO {table}{suffix(new)} "
                f"SELECT * FROM {table}{suffix(old)} WHERE app_id <> ?",
                (app_id,),
            )
    return position


class OnlyApp:
    """A projection seen through a filter: only the events of one app's buyers and catalogue
    reach it.
    A replay starts at the first event, so every buyer's registration (which names its app)
    is seen before the buyer's other events."""

    def __init__(self, projection: Projection, app_id: str) -> None:
        self.inner = projection
        self.app_id = app_id
        self.name = projection.name
        self.tables = projection.tables
        self.indexes = projection.indexes
        self._buyers: set[Any] = set()

    def create_tables(self, cursor: Cursor) -> None:
        self.inner.create_tables(cursor)

    def apply(self, cursor: Cursor, position: int, event: Any) -> None:
        if isinstance(event, Buyer.Created) and event.app_id == self.app_id:
            self._buyers.add(event.originator_id)
        if isinstance(event, Buyer.Event):
            mine = event.originator_id in self._buyers
        elif isinstance(event, AppCatalogue.Event):  # the others' catalogues were copied
            mine = event.originator_id == catalogue_id(self.app_id)
        else:
            mine = True
        if mine:
            self.inner.apply(cursor, position, event)


def _prepare(store: ViewStore, projection: Projection) -> tuple[int, int]:
    """The live generation and a fresh, empty one after it; older ones are dropped."""
    with store.transaction() as cursor:
        cursor.execute(TRACKING_SCHEMA)
        cursor.execute(GENERATIONS_SCHEMA)
        old = active_generation(cursor, projection.name)
        new = old + 1
        for stale in (old - 1, new):  # the previous one, and any half-built leftover
            if stale >= 1:
                drop_generation(cursor, projection.tables, stale)
                cursor.execute(
                    "DELETE FROM projection_tracking WHERE name = ?",
                    (tracking_name(projection.name, stale),),
                )
    return old, new
