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

from adapters.usecases.ingest import Ingestor, Outcome, Webhook

log = logging.getLogger("entitlements.ingest")

MAX_BATCH = 256
# Webhooks waiting for the writer, at most: while the database is away the writer is stuck in
# one commit, and each request beyond this is refused at once rather than kept in memory.
MAX_WAITING = 4096


class NotRecorded(RuntimeError):
    """The webhook was not recorded in time (the database is slow or away) or the writer has too
    many waiting: the caller answers 503 and Stripe retries."""


@dataclass
class _Pending:
    webhook: Webhook | None  # None once its request gave up: skipped, its body freed
    future: asyncio.Future[Outcome]
    loop: asyncio.AbstractEventLoop


class GroupCommitWriter:
    def __init__(
        self, ingestor: Ingestor, max_batch: int = MAX_BATCH, max_waiting: int = MAX_WAITING
    ) -> None:
        self.ingestor = ingestor
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        # Set by a failed commit, cleared by one that succeeds. Meanwhile one webhook at a time
        # tries the database (the others hear 503 at once), so bodies are not held by the
        # hundred in a batch that waits for a database that is away.
        self._failing = False
        self.last_error: str | None = None  # of the last commit, while it failed (/healthz)
        self._start_lock = threading.Lock()

    async def record(self, webhook: Webhook, timeout: float = 0) -> Outcome:
        """Resolves once the webhook's event is durable (or raises the storage error). With a
        `timeout` (seconds), raises NotRecorded after it: the event is then recorded only if
        its commit had already begun (a retry from Stripe is then a duplicate)."""
        waiting = self._queue.qsize()
        if waiting >= self.max_waiting:
            raise NotRecorded(f"{self.max_waiting} webhooks already wait for the database")
        if self._failing and waiting:
            raise NotRecorded("the database is unavailable (another webhook is trying it)")
        self._ensure_started()
        loop = asyncio.get_running_loop()
        pending = _Pending(webhook, loop.create_future(), loop)
        self._queue.put(pending)
        # `asyncio.wait`, not `wait_for`: a timeout raises nothing whose traceback would keep
        # this frame (and the body) alive in the queue, which holds the future till drained.
        done, _ = await asyncio.wait({pending.future}, timeout=timeout or None)
        if not done:
            pending.webhook = None
            pending.future.cancel()
            raise NotRecorded(f"not recorded within {timeout} s")
        return pending.future.result()

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
            batch = [first] if self._failing else [first, *self._drain()]
            stop = None in batch
            # Those whose request gave up were answered 503: Stripe sends them again.
            # Read once: a request may give up (and clear its webhook) at any moment.
            live = [(p, w) for p in batch if p is not None and (w := p.webhook) is not None]
            if live:
                self._commit(live)
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

    def _commit(self, live: list[tuple[_Pending, Webhook]]) -> None:
        batch = [pending for pending, _ in live]
        try:
            outcomes = self.ingestor.record_many([webhook for _, webhook in live])
        except Exception as error:  # never let the writer thread die
            log.exception("group commit failed")
            outcomes = [error] * len(batch)
            self._failing = True
            self.last_error = f"{type(error).__name__}: {error}"
        else:
            self._failing = False
            self.last_error = None
        self.last_error: str | None = None  # of the last commit, while it failed (/healthz)
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
