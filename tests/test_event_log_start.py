"""Several hosts started at once on an empty PostgreSQL database each create the event log's
tables, types and functions (`CREATE ... IF NOT EXISTS`, which is not atomic there): the losers
of that race get a unique violation, a duplicate object or "tuple concurrently updated" (found
in the cluster: a host that failed to start). Each tries again until the log is there."""

from __future__ import annotations

import threading

import psycopg

from adapters.storage.eventstore import EventLog, open_event_log
from tests.conftest import postgres_schema

STARTING_AT_ONCE = 8
ROUNDS = 3


def open_at_once(url: str, count: int) -> tuple[list[EventLog], list[str]]:
    """`count` threads open the event log at the same instant: the logs opened, the errors."""
    opened: list[EventLog] = []
    failed: list[str] = []
    start = threading.Barrier(count)

    def open_it() -> None:
        start.wait()
        try:
            opened.append(open_event_log(url))
        except Exception as error:  # reported by the caller
            failed.append(repr(error))

    threads = [threading.Thread(target=open_it) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return opened, failed


def test_processes_starting_at_once_on_an_empty_database_all_open_the_event_log() -> None:
    for _ in range(ROUNDS):
        with postgres_schema() as url:
            opened, failed = open_at_once(url, STARTING_AT_ONCE)
            for log in opened:
                log.close()
            assert failed == [] and len(opened) == STARTING_AT_ONCE
            schema = url.rsplit("schema=", 1)[1]
            with psycopg.connect(url.split("?")[0]) as conn:  # the log's table is there
                found = conn.execute(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
                    (schema,),
                ).fetchone()
            assert found is not None and found[0] >= 1
