"""Where read models live: a small SQL store on SQLite or PostgreSQL.

Read models are derived data: they can be dropped and rebuilt from the event log at any time.
On SQLite they sit in their own file beside the event log (`x.sqlite` -> `x.views.sqlite`), so
that projecting never waits for the webhook writer's lock; on PostgreSQL they are tables in the
same database and schema as the event log. SQL is written once, with `?` placeholders.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from projections.database import (
    CLIENT_TCP,
    POOLED_TCP_USER_TIMEOUT,
    ask_server_keepalives,
    database_timeout,
    sqlite_path,
)

Row = tuple[Any, ...]
CHECKPOINT_PAGES = 16384  # WAL pages (4 KiB) between checkpoints of the read models' file


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...
    def fetchall(self) -> list[Row]: ...
    def fetchone(self) -> Row | None: ...

    @property
    def rowcount(self) -> int: ...


class ViewStore(Protocol):
    def transaction(self) -> contextlib.AbstractContextManager[Cursor]: ...

    # A read-only snapshot that never waits for a writer, nor makes one wait.
    def reading(self) -> contextlib.AbstractContextManager[Cursor]: ...

    # One read-only statement in a snapshot of its own (one round trip); its rows.
    def rows(self, sql: str, params: Sequence[Any]) -> list[Row]: ...

    # Whether a read is a round trip to a server (then worth grouping with others).
    remote: bool

    # How another process opens this store (`reopen`); None: only this process can.
    def locator(self) -> tuple[str, str] | None: ...

    def close(self) -> None: ...


class SQLiteViewStore:
    """One connection writes (under a lock: SQLite has one writer at a time); each thread that
    reads has a read-only connection of its own. With the WAL journal a reader sees the last
    commit before its read began and neither waits for the writer nor holds it up, so a
    query never queues behind the projector, nor behind another query."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        # Derived data: a commit lost to a power cut is applied again from the log (the tracking
        # row is in the same transaction), so no fsync per batch.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=10000")
        # A checkpoint copies the WAL's pages into the file: every 4 MB (SQLite's default) it
        # ran after nearly every batch of a rebuild, copying the same hot index pages again
        # and again. Every 64 MB, a page changed by many batches is copied once.
        self._conn.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
        self._lock = threading.RLock()  # the writing connection, shared by this process's threads
        self._readers = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._opened_lock = threading.Lock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._lock:
            cursor = self._conn.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    @contextlib.contextmanager
    def reading(self) -> Iterator[Cursor]:
        if self.path == ":memory:":  # one database per connection: read through the writer's
            with self.transaction() as cursor:
                yield cursor
            return
        cursor = self._reader().cursor()
        cursor.execute("BEGIN")  # deferred: a snapshot from the first read on
        try:
            yield cursor
        finally:
            cursor.execute("COMMIT")

    remote = False  # a read is a few microseconds in this process

    def locator(self) -> tuple[str, str] | None:
        """How another process opens this store (`reopen`); None: only this one can."""
        return None if self.path == ":memory:" else ("sqlite", self.path)

    def rows(self, sql: str, params: Sequence[Any]) -> list[Row]:
        if self.path == ":memory:":
            with self.transaction() as cursor:
                return cursor.execute(sql, params).fetchall()
        return self._reader().execute(sql, params).fetchall()  # autocommit: its own snapshot

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._readers, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None)
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA busy_timeout=10000")
            self._readers.conn = conn
            with self._opened_lock:
                self._opened.append(conn)
        return conn

    def close(self) -> None:
        with self._opened_lock:
            readers, self._opened = self._opened, []
        for conn in readers:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        with self._lock:  # after a transaction in progress
            self._conn.close()


class RewritingCursor:
    """A cursor whose SQL is rewritten before it runs (placeholders for psycopg, table names
    for a read model's generation)."""

    def __init__(self, cursor: Any, rewrite: Callable[[str], str]) -> None:
        self._cursor = cursor
        self._rewrite = rewrite

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cursor.execute(self._rewrite(sql), params)

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any:
        return self._cursor.executemany(self._rewrite(sql), params)

    def fetchall(self) -> list[Row]:
        return self._cursor.fetchall()

    def fetchone(self) -> Row | None:
        return self._cursor.fetchone()

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount


def placeholders(values: Sequence[Any]) -> str:
    """`?, ?, ?` for an `IN (...)` of these values."""
    return ", ".join("?" for _ in values)


def _psycopg_placeholders(sql: str) -> str:
    return sql.replace("?", "%s")


class PostgresViewStore:
    """Writes and reads have pools of their own, so that queries never wait for a connection
    the projector holds. A read is a REPEATABLE READ, READ ONLY transaction: its statements
    all see one snapshot (a batch is committed whole, so facts and links always agree)."""

    def __init__(
        self,
        database_url: str,
        max_size: int = 5,
        max_readers: int = 10,
        read_url: str | None = None,
    ) -> None:
        self.database_url = database_url  # `locator()`: another process writes, on the primary
        conninfo, schema = split_schema(database_url)
        options = f"-c search_path={schema}" if schema else None
        self._pool = _pool(conninfo, options, max_size)
        # `read_url`: a hot standby of the same database, for reads only (`serve`'s queries).
        read_conninfo, read_schema = split_schema(read_url) if read_url else (conninfo, schema)
        read_options = f"-c search_path={read_schema or schema}" if read_schema or schema else None
        self._read_pool = _pool(read_conninfo, read_options, max_readers, configure=_read_only)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Cursor]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            yield RewritingCursor(cursor, _psycopg_placeholders)

    @contextlib.contextmanager
    def reading(self) -> Iterator[Cursor]:
        with self._read_pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            yield RewritingCursor(cursor, _psycopg_placeholders)

    remote = True

    def locator(self) -> tuple[str, str] | None:
        """How another process opens this store (`reopen`)."""
        return ("postgresql", self.database_url)

    def rows(self, sql: str, params: Sequence[Any]) -> list[Row]:
        with self._read_pool.connection() as conn:  # autocommit: no BEGIN, no COMMIT
            return conn.execute(_psycopg_placeholders(sql), params).fetchall()

    def close(self) -> None:
        self._read_pool.close()
        self._pool.close()


def _pool(conninfo: str, options: str | None, max_size: int, configure: Any = None) -> Any:
    from psycopg_pool import ConnectionPool

    def configured(conn: Any) -> None:
        ask_server_keepalives(conn)
        if configure is not None:
            configure(conn)

    return ConnectionPool(
        conninfo,
        min_size=1,
        max_size=max_size,
        # A pooled connection may send a large pipelined batch to a server busy for seconds:
        # unacknowledged data is given longer than on the lease's own connection.
        kwargs={
            **({"options": options} if options else {}),
            **CLIENT_TCP,
            "tcp_user_timeout": POOLED_TCP_USER_TIMEOUT,
        },
        configure=configured,
        open=True,
        timeout=float(database_timeout()),  # fail promptly while the database is down
    )


def _read_only(conn: Any) -> None:
    from psycopg import IsolationLevel

    conn.isolation_level = IsolationLevel.REPEATABLE_READ  # of `reading()`'s transactions
    conn.read_only = True
    conn.autocommit = True  # a lone statement needs no transaction of ours


def split_schema(database_url: str) -> tuple[str, str | None]:
    """libpq's URL (other parameters such as `host=/run/postgresql` kept) and our `schema`."""
    parts = urlsplit(database_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((value for name, value in query if name == "schema"), None)
    rest = urlencode([(name, value) for name, value in query if name != "schema"])
    return urlunsplit(("postgresql", parts.netloc, parts.path, rest, "")), schema


def open_view_store(database_url: str, read_url: str | None = None) -> ViewStore:
    if database_url.startswith("sqlite:"):
        path = sqlite_path(database_url)
        return SQLiteViewStore(path if path == ":memory:" else _views_path(path))
    return PostgresViewStore(database_url, read_url=read_url)


def reopen(locator: tuple[str, str]) -> ViewStore:
    """The store a `locator()` names, opened anew (in another process)."""
    kind, where = locator
    return SQLiteViewStore(where) if kind == "sqlite" else PostgresViewStore(where)


def _views_path(events_path: str) -> str:
    path = Path(events_path)
    return str(path.with_name(f"{path.stem}.views{path.suffix or '.sqlite'}"))
