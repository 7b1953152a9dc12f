"""The event store: the eventsourcing library's Application on SQLite or PostgreSQL.

The application `name` is storage identity (it names PostgreSQL tables and tracking rows): never
change it. Raw Stripe bodies are stored as text inside the events, uncompressed and unencrypted;
that choice cannot be changed later without migrating every stored event.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit
from uuid import UUID

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import IntegrityError, ProgrammingError
from psycopg.sql import SQL, Identifier

from adapters.transcoding import OrjsonTranscoder
from domain.aggregates import Buyer


class UnsupportedDatabase(ValueError):
    pass


def database_timeout() -> str:
    """Seconds to wait for a database lock or a pooled connection before failing (a webhook then
    gets 503, /healthz says unreachable), so that an outage is answered promptly rather than
    after the pool's 30 s. `ENTITLEMENTS_DB_TIMEOUT` changes it (fault tests use 1); default 10."""
    return str(int(os.environ.get("ENTITLEMENTS_DB_TIMEOUT") or 10))


class EventLog(Application):
    """Every domain event of every app: buyers' histories, webhook receipts, catalogues."""

    name = "Entitlements"

    def __init__(self, env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        # The newest notification id this process has written (or found at start): reads
        # catch their read models up to it, so that they see their own writes.
        self.high_water = self.recorder.max_notification_id() or 0
        self._high_water_lock = threading.Lock()
        # Told of each write before and after it is saved (`projections/answers.AnswerCache`).
        self.pending: Any = None

    def construct_transcoder(self) -> OrjsonTranscoder:
        transcoder = OrjsonTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def save(self, *objs: Any, touches: Any = None, **kwargs: Any) -> Any:
        """Save, telling `pending` (the answer cache) before and after: `touches` says what the
        events may change for cached answers (None: anything)."""
        pending = self.pending
        token = pending.writing(touches) if pending is not None else None
        try:
            if objs and not kwargs and all(isinstance(obj, DomainEvent) for obj in objs):
                recordings = self._save_events(objs)
            else:
                recordings = super().save(*objs, **kwargs)
        except BaseException:
            if pending is not None:
                pending.not_written(token)
            raise
        if pending is not None:
            pending.written(token, recordings[-1].notification.id if recordings else 0)
        if recordings:
            with self._high_water_lock:
                self.high_water = max(self.high_water, recordings[-1].notification.id)
        return recordings

    def _save_events(self, events: tuple[DomainEvent, ...]) -> Any:
        """What `Application.save` does with domain events, without its per-object checks
        against runtime-checkable Protocols (~15 us each on Python 3.11: a fifth of recording
        a webhook)."""
        processing_event: ProcessingEvent[Any] = ProcessingEvent()
        processing_event.events.extend(events)  # type: ignore[arg-type]
        recordings = self._record(processing_event)
        self._notify(recordings)
        return recordings

    def last_version(self, aggregate_id: Any) -> int | None:
        """The version of an aggregate's newest event, without replaying its history."""
        newest = self.recorder.select_events(aggregate_id, desc=True, limit=1)
        return newest[0].originator_version if newest else None

    def last_versions(self, aggregate_ids: list[UUID]) -> dict[UUID, int]:
        """`last_version` of many aggregates in one query (absent: no events yet). A group
        commit of new buyers would otherwise make one round trip per buyer, in series."""
        found: dict[UUID, int] = {}
        for start in range(0, len(aggregate_ids), 500):
            found.update(self._last_versions(aggregate_ids[start : start + 500]))
        return found

    def _last_versions(self, ids: list[UUID]) -> dict[UUID, int]:
        if self._on_postgres():
            rows = self._select(
                "SELECT originator_id, MAX(originator_version) FROM {table} "
                "WHERE originator_id = ANY(%s) GROUP BY originator_id",
                (ids,),
            )
        else:
            rows = self._select(
                "SELECT originator_id, MAX(originator_version) FROM {table} "
                f"WHERE originator_id IN ({','.join('?' * len(ids))}) GROUP BY originator_id",
                [i.hex for i in ids],
            )
        return {_as_uuid(originator_id): version for originator_id, version in rows}

    def heads(self, start: int, end: int) -> list[Head]:
        """The notifications in (start, end] without their state: what judging a range another
        process applied needs (`projections/touched.py`). Reading each event's state (a 4.5 KB
        Stripe body) to learn its topic cost the server as much as applying it."""
        if self._on_postgres():
            query = "SELECT notification_id, originator_id, topic FROM {table} "
            query += "WHERE notification_id > %s AND notification_id <= %s ORDER BY notification_id"
        else:
            query = "SELECT rowid, originator_id, topic FROM {table} "
            query += "WHERE rowid > ? AND rowid <= ? ORDER BY rowid"
        rows = self._select(query, (start, end))
        return [Head(id, _as_uuid(originator_id), topic) for id, originator_id, topic in rows]

    def _on_postgres(self) -> bool:
        return hasattr(self.recorder.datastore, "schema")  # type: ignore[attr-defined]

    def _select(self, query: str, params: Any) -> list[tuple[Any, ...]]:
        """The rows of a read of the events table (`{table}` in `query`), as tuples."""
        recorder: Any = self.recorder
        table = recorder.events_table_name
        if self._on_postgres():
            name = SQL("{}.{}").format(Identifier(recorder.datastore.schema), Identifier(table))
            with recorder.datastore.get_connection() as conn, conn.cursor() as cursor:
                cursor.execute(SQL(query).format(table=name), params)
                return [tuple(row.values()) for row in cursor.fetchall()]
        with recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(query.format(table=table), params)
            return [tuple(row) for row in cursor.fetchall()]

    def history(self, aggregate_id: Any) -> list[Buyer.Event]:
        return list(self.events.get(aggregate_id))


class Head(NamedTuple):
    """A notification's id, aggregate and topic (`EventLog.heads`)."""

    id: int
    originator_id: UUID
    topic: str


def _as_uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)


def store_env(database_url: str) -> dict[str, str]:
    """The eventsourcing environment for a database URL (sqlite:///path or postgresql://...)."""
    parts = urlsplit(database_url)
    if parts.scheme == "sqlite":
        return _sqlite_env(database_url)
    if parts.scheme in ("postgres", "postgresql"):
        return _postgres_env(parts)
    raise UnsupportedDatabase(f"unsupported database URL scheme {parts.scheme!r}")


def sqlite_path(database_url: str) -> str:
    """sqlite:///relative/path, sqlite:////absolute/path, or sqlite:///:memory:."""
    path = database_url.removeprefix("sqlite://").removeprefix("/")
    if not path:
        raise UnsupportedDatabase("sqlite URL needs a path: sqlite:///var/entitlements.sqlite")
    return path


def _sqlite_env(database_url: str) -> dict[str, str]:
    path = sqlite_path(database_url)
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": path,
        "SQLITE_LOCK_TIMEOUT": database_timeout(),
    }


def _postgres_env(parts: Any) -> dict[str, str]:
    query = parse_qs(parts.query)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "APPLICATION_RECORDER_TOPIC": "adapters.pg_recorder:PostgresEventRecorder",
        "POSTGRES_DBNAME": unquote(parts.path.lstrip("/")) or "postgres",
        # `?host=/run/postgresql` (libpq's form) reaches a local server by its Unix socket.
        "POSTGRES_HOST": query.get("host", [parts.hostname or "127.0.0.1"])[0],
        "POSTGRES_PORT": query.get("port", [str(parts.port or 5432)])[0],
        "POSTGRES_USER": unquote(parts.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        # Writers wait for the table lock rather than fail at once under contention.
        "POSTGRES_LOCK_TIMEOUT": database_timeout(),
        "POSTGRES_CONNECT_TIMEOUT": database_timeout(),  # the wait for a pooled connection
    }
    if "schema" in query:
        env["POSTGRES_SCHEMA"] = query["schema"][0]
    return env


def open_event_log(database_url: str, attempts: int = 5) -> EventLog:
    """Several processes starting at once on an empty PostgreSQL schema race to create its
    tables and types (`CREATE ... IF NOT EXISTS` is not atomic there): the losers try again."""
    for attempt in range(attempts):
        try:
            return EventLog(env=store_env(database_url))
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")
