"""Group commit: one writer thread records whatever webhooks are waiting, in one transaction.

Each request still gets its answer only after the transaction holding its event has committed;
what changes is that concurrent requests share one commit (one fsync on SQLite, one table lock
on PostgreSQL) instead of queueing for one each. A lone request is committed at once: nothing
waits to fill a batch.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass

from adapters.ingest import Ingestor, Outcome, Webhook

log = logging.getLogger("entitlements.ingest")

MAX_BATCH = 256


@dataclass
class _Pending:
    webhook: Webhook
    future: asyncio.Future[Outcome]
    loop: asyncio.AbstractEventLoop


class GroupCommitWriter:
    def __init__(self, ingestor: Ingestor, max_batch: int = MAX_BATCH) -> None:
        self.ingestor = ingestor
        self.max_batch = max_batch
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    async def record(self, webhook: Webhook) -> Outcome:
        """Resolves once the webhook's event is durable (or raises the storage error)."""
        self._ensure_started()
        loop = asyncio.get_running_loop()
        pending = _Pending(webhook, loop.create_future(), loop)
        self._queue.put(pending)
        return await pending.future

    def _ensure_started(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first, *self._drain()]
            stop = None in batch
            batch = [p for p in batch if p is not None]
            self._commit(batch)
            if stop:
                return

    def _drain(self) -> list[_Pending | None]:
        waiting: list[_Pending | None] = []
        while len(waiting) < self.max_batch - 1:
            try:
                waiting.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return waiting

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            outcomes = self.ingestor.record_many([p.webhook for p in batch])
        except Exception as error:  # never let the writer thread die
            log.exception("group commit failed")
            outcomes = [error] * len(batch)
        # One wake-up of each event loop for the whole batch, not one per request: each costs
        # the loop an iteration (and the writer a syscall).
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, object]]] = {}
        for pending, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(pending.loop, []).append((pending.future, outcome))
        for loop, settled in by_loop.items():
            loop.call_soon_threadsafe(_settle_all, settled)

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=10)


def _settle_all(settled: list[tuple[asyncio.Future[Outcome], Outcome | Exception]]) -> None:
    for future, outcome in settled:
        _settle(future, outcome)


def _settle(future: asyncio.Future[Outcome], outcome: Outcome | Exception) -> None:
    if future.done():  # the request was cancelled (client gone): nothing to answer
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
