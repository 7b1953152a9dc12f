"""The delivery worker: publishes recorded changes and sends them, endpoint by endpoint.

It runs in a thread of its own (in the projector's process: `entitlements project`, on every
host; only the projector holding the lease publishes), with one asyncio task per configured
endpoint, and each endpoint's POSTs in threads of its own (its own connections too), so a slow
or dead endpoint only ever holds up its own task and threads: never another endpoint, another
app, the projector, webhooks or queries (those run in other processes or threads, and the
database work here is short transactions).

Each task leases what its endpoint may be sent now (`DeliveryStore.claim`: in order per
customid), POSTs those concurrently, and records the outcomes. A failure is retried after 2 s,
then twice as long each time up to an hour, for 3 days from the first attempt; then it is dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from adapters.config import Endpoint
from adapters.outbound import sender
from adapters.outbound.publisher import Publisher
from adapters.outbound.store import Claimed, DeliveryStore, Outcome

log = logging.getLogger("entitlements.outbound")

FIRST_RETRY = 2.0  # seconds after a first failure
MAX_BACKOFF = 3600.0
GIVE_UP_AFTER = 3 * 86400.0  # seconds of retries, from the first attempt
LEASE_MARGIN = 5.0  # a lease outlives the longest POST by this much
PUBLISH_POLL = 0.05  # seconds between looks for changes the projector recorded
ENDPOINT_POLL = 0.5  # seconds between looks for retries that came due (or other hosts' work)
CONCURRENCY = 64  # deliveries in flight per endpoint (one per customid at most)


def next_attempt(attempts: int, retry_since: float, now: float) -> float | None:
    """When to try again after `attempts` failed attempts; None: past 3 days, dead."""
    at = now + min(FIRST_RETRY * 2 ** (attempts - 1), MAX_BACKOFF)
    return None if at - retry_since > GIVE_UP_AFTER else at


def outcome(claimed: Claimed, attempt: sender.Attempt, now: float) -> Outcome:
    if attempt.delivered:
        return Outcome(claimed.id, now, attempt.status, None)
    later = next_attempt(claimed.attempts + 1, claimed.retry_since, now)
    return Outcome(claimed.id, now, attempt.status, attempt.error, later)


class DeliveryWorker:
    def __init__(
        self,
        store: DeliveryStore,
        publisher: Publisher,
        endpoints: Mapping[str, Sequence[Endpoint]],
        timeout: float = sender.TIMEOUT,
        concurrency: int = CONCURRENCY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.endpoints = endpoints
        self.timeout = timeout
        self.lease = timeout + LEASE_MARGIN
        self.concurrency = concurrency
        self.clock = clock
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wakes: list[asyncio.Event] = []
        self._started = threading.Event()
        # Set while this process publishes: the active projector's (its lease), whose outbox it
        # is. Sending runs in every projector's process: each delivery is claimed under a lease.
        self.publishing = threading.Event()

    # --- lifecycle (from other threads) ---------------------------------------------------

    def start(self, publish: bool = True) -> threading.Thread:
        if publish:
            self.publishing.set()
        self._started.clear()
        self._thread = threading.Thread(target=self._run, name="deliveries", daemon=True)
        self._thread.start()
        self._started.wait(5)
        return self._thread

    def stop(self, timeout: float = 15.0) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def poke(self) -> None:
        """Changes may have been recorded: look now rather than at the next poll."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake_all)

    # --- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        pairs = [(app_id, e) for app_id, es in sorted(self.endpoints.items()) for e in es]
        self._wakes = [asyncio.Event() for _ in pairs]
        self._started.set()
        tasks = [asyncio.create_task(self._publishing())]
        tasks += [
            asyncio.create_task(self._delivering(_Sending(app_id, e, self.concurrency), wake))
            for (app_id, e), wake in zip(pairs, self._wakes, strict=True)
        ]
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _wake_all(self) -> None:
        for wake in self._wakes:
            wake.set()

    async def _publishing(self) -> None:
        while True:
            if not self.publishing.is_set():  # a standby's: the active projector publishes
                await asyncio.sleep(PUBLISH_POLL)
                continue
            try:
                published = await asyncio.to_thread(self.publisher.publish)
            except Exception:  # the database may be away: try again shortly
                log.exception("publishing changes failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if published:
                self._wake_all()
            else:
                await asyncio.sleep(PUBLISH_POLL)

    async def _delivering(self, sending: _Sending, wake: asyncio.Event) -> None:
        try:
            while True:
                wake.clear()
                try:
                    sent = await self._round(sending)
                except Exception:
                    log.exception("delivering to %s failed; retrying", sending.endpoint.url)
                    sent = 0
                    await asyncio.sleep(1.0)
                if not sent:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), ENDPOINT_POLL)
        finally:
            sending.close()

    async def _round(self, sending: _Sending) -> int:
        """Claim what this endpoint may be sent now, send it, record the outcomes."""
        app_id, endpoint = sending.app_id, sending.endpoint
        claimed = await asyncio.to_thread(
            self.store.claim, app_id, endpoint.url, self.clock(), self.lease, self.concurrency
        )
        if not claimed:
            return 0
        attempts = await asyncio.gather(*(sending.post(c.body, self.timeout) for c in claimed))
        now = self.clock()
        outcomes = [outcome(c, a, now) for c, a in zip(claimed, attempts, strict=True)]
        await asyncio.to_thread(self.store.record, outcomes)
        for c, a in zip(claimed, attempts, strict=True):
            if not a.delivered:
                log.warning(
                    "delivery %s to %s failed: %s",
                    c.id,
                    endpoint.url,
                    a.error,
                    extra={"app": app_id, "customid": c.customid, "sequence": c.sequence},
                )
        return len(claimed)


class _Sending:
    """One endpoint's threads and connections: what it holds up is its own."""

    def __init__(self, app_id: str, endpoint: Endpoint, concurrency: int) -> None:
        self.app_id = app_id
        self.endpoint = endpoint
        self.pool = sender.connections(concurrency)
        self.threads = ThreadPoolExecutor(concurrency, thread_name_prefix="delivery")

    async def post(self, body: str, timeout: float) -> sender.Attempt:
        """The POST, in one of this endpoint's threads; past `timeout` by the wall clock it
        is a failure, whatever comes later."""
        loop = asyncio.get_running_loop()
        call = loop.run_in_executor(
            self.threads, sender.post, self.pool, self.endpoint.url, body, self.endpoint.secret,
            timeout,
        )  # fmt: skip
        try:
            return await asyncio.wait_for(call, timeout)
        except TimeoutError:
            return sender.TIMED_OUT

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)
        self.pool.clear()
