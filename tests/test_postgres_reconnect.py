"""After PostgreSQL comes back, the engine reaches it again within about a second, whatever the
outage lasted.

psycopg_pool tries again to connect after 1, 2, 4, 8... seconds: after a 20 s outage, found in
the cluster (`scripts/cluster load --fault stop-postgres`), every host went on answering 503 for
some 9 s more with PostgreSQL up, and the longer the outage the longer that tail. The engine
keeps trying every second instead (adapters/storage/eventstore.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from projections.store import PostgresViewStore
from tests.test_faults import (
    DB_TIMEOUT,
    Server,
    ThrowawayPostgres,
    deliver,
    new_events,
    own_postgres,  # noqa: F401 (a fixture)
)

OUTAGE = 9.0  # seconds: psycopg_pool's own next attempt would come at ~15 s, 6 s after the end


def test_postgres_back_after_an_outage_is_used_again_within_2_s(
    tmp_path: Path,
    own_postgres: ThrowawayPostgres,  # noqa: F811
) -> None:
    server = Server(tmp_path, own_postgres.url, {"ENTITLEMENTS_DB_TIMEOUT": DB_TIMEOUT})
    try:
        with httpx.Client(timeout=30) as http:
            assert deliver(http, server, new_events(1)[0]).status_code == 200
            own_postgres.stop()
            try:
                stopped = time.monotonic()
                while time.monotonic() - stopped < OUTAGE:  # the pool finds its connections gone
                    response = deliver(http, server, new_events(1)[0])
                    assert response is not None and response.status_code == 503
                    time.sleep(0.5)
            finally:
                own_postgres.start()
            back = time.monotonic()
            statuses = []
            for raw in new_events(40):
                response = deliver(http, server, raw)
                statuses.append(response.status_code if response else None)
                if statuses[-1] == 200:
                    break
                time.sleep(0.1)
            took = time.monotonic() - back
        assert statuses[-1] == 200, statuses
        assert took < 2.0, f"first 200 {took:.1f} s after PostgreSQL was back"
    finally:
        server.stop()


def test_read_model_sessions_have_postgres_notice_a_dead_client_within_seconds(
    postgres_url: str,
) -> None:
    """A host cut off the network in the middle of a projector's transaction would otherwise
    keep its row locks (and hold every other host's projector) for as long as the cut lasts:
    the server's keepalives (2 s idle, then 3 probes 1 s apart) end such a session."""
    store = PostgresViewStore(postgres_url)
    settings = ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")
    asked = "SELECT " + ", ".join("current_setting(?)" for _ in settings)
    try:
        with store.transaction() as cursor:
            cursor.execute(asked, settings)
            assert cursor.fetchone() == ("2", "1", "3")
            cursor.execute("SELECT current_schema()")
            (schema,) = cursor.fetchone()
        assert store.rows(asked, settings) == [("2", "1", "3")]  # the read pool's too
        assert postgres_url.endswith(f"schema={schema}")  # the schema is still the one named
    finally:
        store.close()
