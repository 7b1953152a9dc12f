"""`reconcile_every`: `serve` reconciles each app on its own, one process at a time.

Every worker of every host runs this loop; a cross-process lock per app (`adapters/storage/
locks.py`: a PostgreSQL advisory lock, held on a connection of its own; on SQLite, an exclusive
`flock` on a file beside the database) lets one of them reconcile while the others pass, and the
time of the app's last reconcile on record (`AppSync`, in the log every host reads) says whether
one is due, so the app is reconciled once per period however many processes serve it. A
periodic reconcile settles what it finds (`--fix`): the drift it corrects stays on record, in
the buyers' histories and in `GET /v1/sync`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from adapters.bootstrap import Engine
from adapters.config import AppConfig
from adapters.storage import locks
from adapters.storage.locks import RunLock
from adapters.stripe.listing import StripeAccessError, StripeLister, StripeUnavailable
from adapters.usecases.reconcile import RECONCILE, Reconciler
from adapters.usecases.sync_runs import SyncRuns, recorded

log = logging.getLogger("entitlements.reconcile")

MIN_WAIT, MAX_WAIT = 1.0, 60.0  # seconds between looks at what is due
SETTLE_TIMEOUT = 60.0  # seconds to wait for the projector before comparing


def lock_for(database_url: str, app_id: str) -> RunLock:
    return locks.lock_for(database_url, f"reconcile:{app_id}")


class PeriodicReconcile:
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self.runs = SyncRuns(engine.log)
        self.apps = [
            app
            for app in engine.settings.apps.values()
            if app.reconcile_every > 0 and app.stripe_api_key
        ]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_due(self) -> float:
        """Reconcile every app whose time has come (unless another process is at it); the
        seconds until the next one is due."""
        waits = [MAX_WAIT]
        for app in self.apps:
            wait = self._due_in(app)
            if wait <= 0:
                self._reconcile_locked(app)
                wait = self._due_in(app)
            waits.append(wait)
        return max(MIN_WAIT, min(waits))

    def _due_in(self, app: AppConfig) -> float:
        last = self.runs.latest(app.app_id).get(RECONCILE)
        if last is None:
            return 0.0
        return last.finished_at + app.reconcile_every - self.clock()

    def _reconcile_locked(self, app: AppConfig) -> None:
        lock = lock_for(self.engine.settings.database_url, app.app_id)
        if not lock.acquire():
            return  # another process reconciles it now
        try:
            if self._due_in(app) <= 0:  # not done meanwhile by the lock's last holder
                self.reconcile(app)
        finally:
            lock.release()

    def reconcile(self, app: AppConfig) -> None:
        assert app.stripe_api_key is not None
        lister = StripeLister(
            app.stripe_api_key, app.stripe_api_base, app.stripe_max_requests_per_second
        )
        run = Reconciler(self.engine, lister, app.app_id, self.clock, self._settle)
        try:
            with recorded(self.runs, app.app_id, RECONCILE, self.clock) as notes:
                report = run.run(fix=True)
                notes.counts = report.counts()
                notes.differences = [d.to_json() for d in report.differences]
        except (StripeAccessError, StripeUnavailable) as error:  # on record; tried next period
            log.error("reconcile of %s failed: %s", app.app_id, error)
            return
        log.info("reconcile of %s: %s", app.app_id, report.render())

    def _settle(self) -> None:
        """Wait for the projector (in its own process, or a thread) to apply the log."""
        position = self.engine.log.recorder.max_notification_id() or 0
        self.engine.follower.wait_for(position, SETTLE_TIMEOUT)

    def start(self) -> threading.Thread | None:
        """A daemon thread reconciling what is due; none when no app reconciles on its own."""
        if not self.apps:
            return None
        self._thread = threading.Thread(target=self._loop, name="reconcile", daemon=True)
        self._thread.start()
        return self._thread

    def _loop(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            try:
                wait = self.run_due()
            except Exception:  # a database hiccup: logged, and tried again shortly
                log.exception("periodic reconcile failed")
                wait = MAX_WAIT

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
