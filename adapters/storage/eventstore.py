"""The event store: the eventsourcing library's Application on SQLite or PostgreSQL.

The application `name` is storage identity (it names PostgreSQL tables and tracking rows): never
change it. Raw Stripe bodies are stored as text inside the events, uncompressed and unencrypted;
that choice cannot be changed later without migrating every stored event.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from uuid import UUID

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.domain import DomainEvent
from eventsourcing.persistence import IntegrityError, InternalError, ProgrammingError
from psycopg.sql import SQL, Identifier

from adapters.storage.transcoding import OrjsonTranscoder
from domain.aggregates import Buyer
from projections.database import UnsupportedDatabase, database_timeout, sqlite_path


class EventLog(Application):
    """Every domain event of every app: buyers' histories, webhook receipts, catalogues."""

    name = "Entitlements"

    def construct_transcoder(self) -> OrjsonTranscoder:
        transcoder = OrjsonTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        if objs and not kwargs and all(isinstance(obj, DomainEvent) for obj in objs):
            return self._save_events(objs)
        return super().save(*objs, **kwargs)

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
        "APPLICATION_RECORDER_TOPIC": "adapters.storage.pg_recorder:PostgresEventRecorder",
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


def open_event_log(database_url: str, attempts: int = 10) -> EventLog:
    """Several processes starting at once on an empty PostgreSQL schema race to create its
    tables, types and functions (`CREATE ... IF NOT EXISTS` is not atomic there): the losers
    (a unique violation, a duplicate object, "tuple concurrently updated") try again."""
    for attempt in range(attempts):
        try:
            return EventLog(env=store_env(database_url))
        except (IntegrityError, InternalError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")
