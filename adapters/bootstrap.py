"""The composition root: configuration -> event store -> application services -> HTTP and CLI."""

from __future__ import annotations

from dataclasses import dataclass

from adapters.config import Settings
from adapters.eventstore import EventLog, open_event_log
from adapters.ingest import Ingestor


@dataclass
class Engine:
    settings: Settings
    log: EventLog
    ingestor: Ingestor

    def close(self) -> None:
        self.log.close()


def bootstrap(settings: Settings) -> Engine:
    log = open_event_log(settings.database_url)
    return Engine(settings=settings, log=log, ingestor=Ingestor(log))
