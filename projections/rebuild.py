"""Rebuilding a read model from the first event, without downtime.

The new generation is filled in large batches (one transaction each, constant memory) while the
live one keeps answering queries and following new webhooks. Once the new one has caught up, it
becomes the active one. The generation before the live one is dropped first: by then nothing can
still be reading it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from adapters.eventstore import EventLog
from projections.follower import TRACKING_SCHEMA, Follower, Projection
from projections.generations import SCHEMA as GENERATIONS_SCHEMA
from projections.generations import (
    activate,
    active_generation,
    drop_generation,
    tracking_name,
)
from projections.store import ViewStore

REBUILD_BATCH = 1000


class RebuildRaced(RuntimeError):
    """Another rebuild switched generations first; nothing was switched by this one."""


@dataclass(frozen=True)
class RebuildReport:
    projection: str
    old_generation: int
    new_generation: int
    events: int
    seconds: float


def rebuild(
    log: EventLog,
    store: ViewStore,
    projection: Projection,
    on_batch: Callable[[int, int], None] | None = None,
    batch_size: int = REBUILD_BATCH,
) -> RebuildReport:
    started = time.monotonic()
    old, new = _prepare(store, projection)
    follower = Follower(log, store, projection, batch_size=batch_size, generation=new)
    events = follower.catch_up(on_batch)
    events += follower.catch_up(on_batch)  # what arrived during the first pass
    with store.transaction() as cursor:
        if not activate(cursor, projection.name, old, new):
            raise RebuildRaced(projection.name)
    return RebuildReport(projection.name, old, new, events, time.monotonic() - started)


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
