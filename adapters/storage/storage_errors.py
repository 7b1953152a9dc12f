"""What a database that is down, locked or full raises, on either storage.

A request that meets one of these could not be served now, and may be later: it is answered
503 with Retry-After (never 500), and /healthz reports the storage as failing.
"""

from __future__ import annotations

import sqlite3

import psycopg
from eventsourcing.persistence import PersistenceError

# psycopg_pool's PoolTimeout (no connection while PostgreSQL is away) is a psycopg.Error;
# the event store wraps sqlite3's and psycopg's errors in PersistenceError.
STORAGE_ERRORS: tuple[type[Exception], ...] = (psycopg.Error, sqlite3.Error, PersistenceError)


def is_storage_error(error: BaseException) -> bool:
    return isinstance(error, STORAGE_ERRORS) or isinstance(error.__cause__, STORAGE_ERRORS)
