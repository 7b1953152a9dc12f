"""A rebuild's answers derived by worker processes, written by this one.

After a rebuild's bulk pass every customid's answer is due. Deriving one is CPU work in Python
(read and decode its facts, apply the rules, render three JSON answers): a third of a rebuild,
on one core. Workers, each with its own read-only snapshot of the new generation, derive chunks
of due rows; this process writes each chunk as it comes, holding the tracking row as the
follower's own `derive_due` does. Nothing else writes a generation that is being rebuilt, so
the rows a worker reads are those this process would have read.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from projections.follower import Follower, ReadModelReader
from projections.grants import write
from projections.store import ViewStore, reopen

CHUNK = 2000  # answers per task and per write transaction
PAGE = 40_000  # due rows read at a time: memory stays bounded however many customids
WORTHWHILE = 5000  # fewer due rows than this: starting workers (~0.5 s each) does not pay


def derive_everyone(follower: Follower, store: ViewStore, workers: int | None = None) -> int:
    """Derive every due answer of the follower's generation; how many were derived."""
    workers = workers or os.cpu_count() or 1
    grants = getattr(follower.projection, "grants", None)
    locator = store.locator()
    if grants is None or locator is None or workers < 2 or follower.generation is None:
        return follower.derive_due(CHUNK)
    with follower.reading() as cursor:
        if len(grants.due(cursor, WORTHWHILE)) < WORTHWHILE:
            return follower.derive_due(CHUNK)
    spawn = multiprocessing.get_context("spawn")  # never fork a process with threads
    start = (locator, follower.projection, follower.generation)
    total = 0
    with ProcessPoolExecutor(workers, spawn, initializer=_start, initargs=start) as pool:
        for keys in _pages(follower, grants):
            now = int(grants.clock())
            chunks = [keys[i : i + CHUNK] for i in range(0, len(keys), CHUNK)]
            for rows, gone in pool.map(_derive, chunks, [now] * len(chunks)):
                with follower.holding_position() as cursor:
                    if cursor is not None:
                        write(cursor, rows, gone)
                total += len(rows) + len(gone)
    return total + follower.derive_due(CHUNK)  # anything that came due meanwhile


def _pages(follower: Follower, grants: Any) -> Iterator[list[tuple[str, str]]]:
    """Due rows, a page at a time, until none is due (a written row is due later, or never)."""
    while True:
        with follower.reading() as cursor:
            keys = grants.due(cursor, PAGE)
        if not keys:
            return
        yield keys


_reader: ReadModelReader | None = None


def _start(locator: tuple[str, str], projection: Any, generation: int) -> None:
    global _reader
    _reader = ReadModelReader(reopen(locator), projection, generation)
    _reader.created.add(generation)  # the bulk pass made its tables: read, never create


def _derive(keys: list[tuple[str, str]], now: int) -> tuple[list[Any], list[Any]]:
    assert _reader is not None
    with _reader.reading() as cursor:
        return _reader.projection.grants.derived(cursor, keys, None, now)
