"""Cross-process locks on the engine's database: one process at a time does a named job.

On PostgreSQL, a session advisory lock held on a connection of its own: every host that reaches
the database shares it, and it is released with the session, also when the process dies (kill
-9) or its host is cut off (once the server's TCP keepalives say the client is gone). On
SQLite, an exclusive `flock` on a file beside the database: the processes of one host.

Used by the periodic reconcile (one reconcile per app at a time) and by the projector's lease
(one active projector at a time: `adapters/usecases/projector_lease.py`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg

from projections.database import CLIENT_TCP, ask_server_keepalives, sqlite_path


class RunLock(Protocol):
    def acquire(self) -> bool: ...  # at once: False when another process holds it
    def held(self) -> bool: ...  # still held (a lease kept for long checks it now and then)
    def release(self) -> None: ...


class AdvisoryLock:
    """A PostgreSQL session advisory lock, on a connection of its own (released with it, also
    when the process dies)."""

    def __init__(self, database_url: str, name: str) -> None:
        self.conninfo = libpq_url(database_url)
        # Named by the schema, never by the host: hosts may reach one database by other names.
        schema = dict(parse_qsl(urlsplit(database_url).query)).get("schema", "public")
        digest = hashlib.sha256(f"{schema}|{name}".encode()).digest()
        self.key = int.from_bytes(digest[:8], "big", signed=True)
        self._conn: psycopg.Connection | None = None

    def acquire(self) -> bool:
        conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5, **CLIENT_TCP)
        try:
            ask_server_keepalives(conn)
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        except BaseException:
            conn.close()
            raise
        if row is None or not row[0]:
            conn.close()
            return False
        self._conn = conn
        return True

    def held(self) -> bool:
        """The session lives, so its lock does: False once the connection is broken (the
        server restarted, the session was terminated, the network cut for a few seconds)."""
        if self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the session's locks go with it
            self._conn = None


class FileLock:
    """An exclusive `flock` on a file beside the SQLite database: one process of this host."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:  # no locks on this file system: tried every second, never leaked
            os.close(fd)
            raise
        self._fd = fd
        return True

    def held(self) -> bool:
        return self._fd is not None  # a lock on an open descriptor cannot be taken away

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the lock goes with the descriptor
            self._fd = None


class Unshared:
    """An in-memory SQLite database: no other process can see it, so no other can hold it."""

    def __init__(self) -> None:
        self._held = False

    def acquire(self) -> bool:
        self._held = True
        return True

    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        self._held = False


def libpq_url(database_url: str) -> str:
    """The URL without our own `schema` parameter, which libpq does not know."""
    parts = urlsplit(database_url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def lock_for(database_url: str, name: str) -> RunLock:
    """The lock called `name` (e.g. `reconcile:demo`) on this database, for every process that
    uses it; the file on SQLite is `<database>.<name with - for :>.lock`."""
    if database_url.startswith("sqlite:"):
        path = sqlite_path(database_url)
        if path == ":memory:":
            return Unshared()
        return FileLock(Path(f"{path}.{name.replace(':', '-')}.lock"))
    return AdvisoryLock(database_url, name)
