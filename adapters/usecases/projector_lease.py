"""One active projector at a time: a lease on the database, the others standing by.

Every `serve` (each worker, on every host) starts a projector. Without a lease all of them would
follow the log into the same tables, each batch applied by every projector that got to it (one
commit counting) and their writes to the same rows deadlocking now and then. The lease
(`adapters/storage/locks.py`: a PostgreSQL session advisory lock on a connection of its own, or
an exclusive `flock` beside an SQLite file) lets one of them do the projector's work: follow
the log, derive what the grants' `due` schedule says is due, publish the changes it recorded for
outbound webhooks. The others try the lease every second. When the holder dies its session ends
(or its descriptor closes) and a standby takes over; the holder checks every second that its
session still lives, and once it does not (PostgreSQL restarted, the network cut) it stops
applying at once (`on_lost`: `entitlements project` exits, and `serve` starts another, which
stands by).

Correctness does not depend on the lease: a batch commits only if the tracking row still holds
the position it was read from (`projections/follower.py`), whoever applies it, and a due row is
derived under that same row. Two projectors applying at once (a holder cut off that has not
noticed yet, `entitlements project --once`, a command's own `engine.project()`) waste work but
never apply an event twice or skip one. The lease saves the work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from adapters.bootstrap import Engine
from adapters.storage.locks import RunLock, lock_for

log = logging.getLogger("entitlements.projector")

RETRY_SECONDS = 1.0  # a standby tries the lease this often
CHECK_SECONDS = 1.0  # the holder checks this often that it still holds it


def projector_lease(engine: Engine) -> RunLock:
    return lock_for(engine.settings.database_url, f"projector:{engine.follower.projection.name}")


class LeasedProjector:
    """Stands by until it holds the lease, then runs the projector's work (the follower's loop,
    and the outbound publisher) until stopped or the lease is lost."""

    def __init__(
        self,
        engine: Engine,
        poll_interval: float,
        lease: RunLock | None = None,
        on_lost: Callable[[], None] | None = None,
        on_role: Callable[[bool], None] | None = None,
        retry: float = RETRY_SECONDS,
        check: float = CHECK_SECONDS,
    ) -> None:
        self.engine = engine
        self.poll_interval = poll_interval
        self.lease = lease if lease is not None else projector_lease(engine)
        self.on_lost = on_lost  # None: stop applying and stand by again (in this process)
        self.on_role = on_role  # told True on taking over, False on standing by again
        self.retry = retry
        self.check = check
        self.active = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> threading.Thread:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="projector-lease", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 10.0) -> None:
        """Stop applying and release the lease (a standby takes over within `retry`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        unreachable = False
        while not self._stop.is_set():
            try:
                acquired = self.lease.acquire()
                unreachable = False
            except Exception as error:  # the database is away: still a standby, try again
                if not unreachable:
                    log.warning("projector lease unavailable: %s", error)
                unreachable, acquired = True, False
            if acquired:
                try:
                    self._while_active()
                except Exception:  # the lease was released: stand by, and try again
                    log.exception("projector failed while active; standing by")
                    self._stop.wait(self.retry)
            else:
                self._stop.wait(self.retry)

    def _while_active(self) -> None:
        """The projector's work, until stopped or the lease is lost."""
        engine = self.engine
        log.info("projector active: holds the lease, follows the event log")
        lost = False
        try:  # whatever happens from here, the lease is released at the end
            self._set_role(True)
            engine.follower.start_background(self.poll_interval)
            if engine.outbound is not None:  # the changes this projector records, sent on
                engine.outbound.publishing.set()
            while not self._stop.wait(self.check):
                if not self.lease.held():
                    lost = True
                    break
        finally:
            if lost:
                log.error("projector lease lost: stops applying; another may take over")
                if self.on_lost is not None:
                    self.on_lost()  # at once, not after the batch in flight
            if engine.outbound is not None:
                engine.outbound.publishing.clear()
            engine.follower.stop()
            self.lease.release()
            self._set_role(False)

    def _set_role(self, active: bool) -> None:
        self.active = active
        if self.on_role is not None:
            self.on_role(active)
