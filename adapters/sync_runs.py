"""The record of an app's backfill, import and reconcile runs (`AppSync` in the event log).

Kept in the log, not in a read model: it is what happened (when a run started and ended, what it
counted, the differences reconcile found), it must survive a rebuild, and every host reads the
same database. Appending never replays the app's sync history; reading the latest run of each
command reads the newest events first and stops once each command has one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from adapters.appending import save_retrying
from adapters.eventstore import EventLog
from adapters.stripe.listing import StripeAccessError, StripeUnavailable
from domain.aggregates import AppSync, sync_id

COMMANDS = ("backfill", "import", "reconcile")
DIFFERENCES_KEPT = 100  # per run: the count says how many there were in all
READ_PAGE = 50  # events read at a time, newest first


@dataclass(frozen=True)
class SyncRun:
    command: str
    started_at: float
    finished_at: float
    counts: dict[str, int] = field(default_factory=dict)
    differences: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "failed": bool(self.error),
            "error": self.error or None,
            "counts": self.counts,
            "differences": self.differences,
        }


class SyncRuns:
    def __init__(self, log: EventLog) -> None:
        self.log = log

    def record(self, app_id: str, run: SyncRun) -> None:
        def build() -> list[Any]:
            last = self.log.last_version(sync_id(app_id))
            first = last is None
            events = AppSync(app_id).collect_events() if first else []
            version = AppSync.INITIAL_VERSION + 1 if first else last + 1
            return [*events, ran(app_id, version, run)]

        save_retrying(self.log, build, already_done=lambda: False)

    def latest(self, app_id: str) -> dict[str, SyncRun]:
        """The last run of each command that ever ran for the app."""
        found: dict[str, SyncRun] = {}
        below: int | None = None
        while len(found) < len(COMMANDS):
            page = list(
                self.log.events.get(sync_id(app_id), lte=below, desc=True, limit=READ_PAGE)
            )
            for event in page:
                if isinstance(event, AppSync.Ran) and event.command not in found:
                    found[event.command] = run_of(event)
            if len(page) < READ_PAGE:
                break
            below = page[-1].originator_version - 1
        return found


@dataclass
class Notes:
    """What a run in progress says of itself, recorded when it ends."""

    started_at: float
    counts: dict[str, int] = field(default_factory=dict)
    differences: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def recorded(
    runs: SyncRuns, app_id: str, command: str, clock: Callable[[], float] = time.time
) -> Iterator[Notes]:
    """Record the run in the block when it ends, also when Stripe could not be read to the
    end (then with the error, and the error goes on)."""
    notes = Notes(started_at=clock())
    try:
        yield notes
    except (StripeAccessError, StripeUnavailable) as error:
        failed = SyncRun(command, notes.started_at, clock(), notes.counts, error=str(error))
        runs.record(app_id, failed)
        raise
    done = SyncRun(command, notes.started_at, clock(), notes.counts, notes.differences)
    runs.record(app_id, done)


def ran(app_id: str, version: int, run: SyncRun) -> AppSync.Ran:
    return AppSync.Ran(
        originator_id=sync_id(app_id),
        originator_version=version,
        timestamp=AppSync.Event.create_timestamp(),
        command=run.command,
        started_at=run.started_at,
        finished_at=run.finished_at,
        failed=bool(run.error),
        error=run.error,
        counts=json.dumps(run.counts),
        differences=json.dumps(run.differences[:DIFFERENCES_KEPT]),
    )


def run_of(event: AppSync.Ran) -> SyncRun:
    return SyncRun(
        command=event.command,
        started_at=event.started_at,
        finished_at=event.finished_at,
        counts=json.loads(event.counts),
        differences=json.loads(event.differences),
        error=event.error,
    )
