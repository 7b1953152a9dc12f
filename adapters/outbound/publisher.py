"""From the projector's outbox to the event log, then to deliveries.

A change recorded by the projector (`permission_changes`, committed with the read models) is
appended to the event log as `ChangeLog.PermissionsChanged`, at the version that is its
sequence; only then is it marked and are its deliveries made (one transaction). A crash between
the two appends it again: the version collides, so it is known to be on the log already, and
the mark and deliveries follow. Several hosts publishing at once collide the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from eventsourcing.persistence import IntegrityError

from adapters.config import Endpoint
from adapters.outbound.store import DeliveryStore
from adapters.storage.eventstore import EventLog
from domain.announcements import ChangeLog, change_id

CHUNK = 500  # changes appended per transaction


class Publisher:
    def __init__(
        self,
        log: EventLog,
        store: DeliveryStore,
        endpoints: Mapping[str, Sequence[Endpoint]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = log
        self.store = store
        self.endpoints = endpoints
        self.clock = clock

    def publish(self, limit: int = CHUNK) -> int:
        """Append up to `limit` recorded changes to the event log and make their deliveries;
        how many changes."""
        changes = self.store.unappended(limit)
        if not changes:
            return 0
        self._append([ChangeLog.changed(*change) for change in changes])
        done = [(a, c, s, change_id(a, c, s)) for a, c, s, _ in changes]
        self.store.appended(done, self.endpoints, self.clock())
        return len(changes)

    def publish_all(self) -> int:
        total = 0
        while count := self.publish():
            total += count
        return total

    def _append(self, events: list[ChangeLog.PermissionsChanged]) -> None:
        try:
            self.log.save(*events)
        except IntegrityError:  # some are on the log already (a crash, another host)
            for change in events:
                try:
                    self.log.save(change)
                except IntegrityError:
                    continue  # the same change, by its deterministic (log, version)
