"""Database URLs and timeouts, as both stores read them: the event store
(`adapters/storage/eventstore.py`) and the read models' (`projections/store.py`) open the same
`sqlite:///...` or `postgresql://...` URL, wait as long for a lock, and reconnect as promptly.

It lives on the read side because the read side may not import the adapters; they may import it.
"""

from __future__ import annotations

import os
from typing import Any


class UnsupportedDatabase(ValueError):
    pass


def reconnect_every_second() -> None:
    """psycopg_pool (under both the event store's pool and the read models') tries again to
    connect after 1, 2, 4, 8... seconds: once PostgreSQL is back from a 20 s outage, hosts went
    on answering 503 for 9 s more (scripts/cluster), longer after longer outages. Every second
    instead (a refused connection costs nothing): back in service within about a second."""
    from psycopg_pool.base import AttemptWithBackoff

    AttemptWithBackoff.DELAY_BACKOFF = 1.0


reconnect_every_second()


# PostgreSQL connections notice a dead peer within seconds, on both ends (the defaults take
# minutes to hours): the client when what it sent is not acknowledged, or the server stops
# answering keepalives; the server when the client does. A host cut off the network in the
# middle of a transaction would otherwise keep its row locks (and the lease's advisory lock)
# for as long as the cut lasts, and every other host's projector would wait on them.
CLIENT_TCP = {
    "keepalives": 1,
    "keepalives_idle": 2,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 3000,  # milliseconds
}
POOLED_TCP_USER_TIMEOUT = 30000  # milliseconds: pooled connections (projections/store.py)
SERVER_TCP = {
    "tcp_keepalives_idle": "2",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "5000",  # milliseconds: later than the client gives up
}


def ask_server_keepalives(conn: Any) -> None:
    """SERVER_TCP for this session, asked once connected (a statement rather than the startup
    `options`, which poolers such as PgBouncer refuse unless told to ignore them)."""
    settings = ", ".join("set_config(%s, %s, false)" for _ in SERVER_TCP)
    conn.execute(f"SELECT {settings}", [v for kv in SERVER_TCP.items() for v in kv])
    if not conn.autocommit:  # a pooled connection is handed out idle, not in a transaction
        conn.commit()


def database_timeout() -> str:
    """Seconds to wait for a database lock or a pooled connection before failing (a webhook then
    gets 503, /healthz says unreachable), so that an outage is answered promptly rather than
    after the pool's 30 s. `ENTITLEMENTS_DB_TIMEOUT` changes it (fault tests use 1); default 10."""
    return str(int(os.environ.get("ENTITLEMENTS_DB_TIMEOUT") or 10))


def sqlite_path(database_url: str) -> str:
    """sqlite:///relative/path, sqlite:////absolute/path, or sqlite:///:memory:."""
    path = database_url.removeprefix("sqlite://").removeprefix("/")
    if not path:
        raise UnsupportedDatabase("sqlite URL needs a path: sqlite:///var/entitlements.sqlite")
    return path
