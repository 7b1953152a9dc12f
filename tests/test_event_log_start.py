"""Several hosts started at once on an empty PostgreSQL database each create the event log's
tables, types and functions (`CREATE ... IF NOT EXISTS`, which is not atomic there): the losers
of that race get a unique violation, a duplicate object or "tuple concurrently updated" (found
in the cluster: a host that failed to start). Each tries again until the log is there."""

from __future__ import annotations

import threading

import psycopg

from adapters.storage.eventstore import open_event_log
from tests.conftest import postgres_schema

STARTING_AT_ONCE = 8
ROUNDS = 3


def test_processes_starting_at_once_on_an_empty_database_all_open_the_event_log() -> None:
    for _ in range(ROUNDS):
        with postgres_schema() as url:
            opened, failed = [], []
            start = threading.Barrier(STARTING_AT_ONCE)

            def open_it() -> None:
                start.wait()
                try:
                    opened.append(open_event_log(url))
                except Exception as error:
                    failed.append(repr(error))

            threads = [threading.Thread(target=open_it) for _ in range(STARTING_AT_ONCE)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for log in opened:
                log.close()
            assert failed == [] and len(opened) == STARTING_AT_ONCE
            with psycopg.connect(url.split("?")[0]) as conn:  # the log's table is there
                schema = url.rsplit("schema=", 1)[1]
                tables = conn.execute(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
                    (schema,),
                ).fetchone()
                assert tables is not None and tables[0] >= 1
