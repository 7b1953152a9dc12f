"""The read models' own process: `serve` starts `entitlements project` beside itself.

One Python process runs one thread at a time. Applying events to the read models in a thread
of the server took the interpreter from the threads that answer webhooks and commit them, and
every hand-off of it delayed the commit thread's next step: on two cores, webhooks/s rose by a
sixth with the read models in a process of their own (docs/benchmarks.md, W1).

The server only reads the read models (`projections/follower.ReadModelReader`); its own writes
that must be seen at once (a link, a catalogue) wait until the read models' tracked position
(in the database) has passed them, whichever projector applied them. This supervisor restarts
the projector if it exits, and the projector exits when the server is gone, even killed
(`project --parent`). Of all the servers' projectors one holds the lease and applies, the
others stand by (`adapters/usecases/projector_lease.py`); each tells its server which it is, on
a pipe, for `/metrics` (`entitlements_projector_active`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

log = logging.getLogger("entitlements.projector")

# Seconds between the projector's looks at the log (it is not woken): what a webhook waits at
# most before its projection starts (a look costs one indexed query).
POLL_INTERVAL = 0.02
# The projector yields the CPU to the server: a webhook is answered once durable, and its
# projection can wait. On two cores, W1 PostgreSQL gained 1-10% (3 alternating pairs).
NICENESS = 10
RESTART_DELAY = 1.0  # seconds before a projector that exited is started again


def can_run_apart(database_url: str) -> bool:
    """Whether another process can reach this database: not an in-memory SQLite one."""
    return not database_url.startswith("sqlite:") or not database_url.endswith(":memory:")


class ProjectorProcess:
    """Runs `entitlements project` as a child of this process, for as long as this runs."""

    def __init__(self, poll_interval: float = POLL_INTERVAL) -> None:
        self.poll_interval = poll_interval
        self.process: subprocess.Popen[bytes] | None = None
        self.active = False  # this server's projector holds the lease (as it last said)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._spawn()
        self._thread = threading.Thread(target=self._watch, name="projector", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        # The same configuration: ENTITLEMENTS_CONFIG and the rest of the environment.
        argv = [sys.executable, "-m", "adapters.cli", "project"]
        argv += ["--poll", str(self.poll_interval), "--parent", str(os.getpid())]
        argv += ["--nice", str(NICENESS)]
        read, write = os.pipe()
        argv += ["--report-fd", str(write)]
        try:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, pass_fds=(write,))
        except BaseException:
            os.close(read)
            raise
        finally:
            os.close(write)  # the child's now: at its exit, the reader sees the end
        self.process = process
        reading = threading.Thread(target=self._read_role, args=(process, read), daemon=True)
        reading.start()
        log.info("projector started", extra={"pid": process.pid})

    def _read_role(self, process: subprocess.Popen[bytes], fd: int) -> None:
        """The projector's lines on its pipe: `active` once it holds the lease, `standby`."""
        with os.fdopen(fd, "rb") as lines:
            for line in lines:
                if self.process is process:
                    self.active = line.strip() == b"active"
        if self.process is process:  # it exited
            self.active = False

    def _watch(self) -> None:
        while not self._stop.is_set():
            assert self.process is not None
            code = self.process.poll()
            if code is not None and not self._stop.is_set():
                log.error("projector exited (%s); starting another", code)
                if self._stop.wait(RESTART_DELAY):
                    return
                self._spawn()
            self._stop.wait(0.5)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
