"""Databases for a run: fresh SQLite files and PostgreSQL databases, and the floors' one table.

The floors store the raw body in one table, one row per webhook, with the settings the engine's
own SQLite store uses (WAL journal, synchronous=FULL: every commit is fsynced) or PostgreSQL's
defaults (synchronous_commit=on).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import psycopg

FLOOR_TABLE = "bench_webhooks"


class FloorStore(Protocol):
    def insert_many(self, bodies: list[str]) -> None: ...

    def close(self) -> None: ...


class SqliteStore:
    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=10000")
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"
        )

    def insert_many(self, bodies: list[str]) -> None:
        """One transaction, one fsync, however many bodies."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.executemany(
                f"INSERT INTO {FLOOR_TABLE} (body) VALUES (?)", [(b,) for b in bodies]
            )
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


class PostgresStore:
    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(
            f"CREATE TABLE IF NOT EXISTS {FLOOR_TABLE} "
            "(id bigserial PRIMARY KEY, body text NOT NULL)"
        )

    def insert_many(self, bodies: list[str]) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            if len(bodies) == 1:
                cur.execute(f"INSERT INTO {FLOOR_TABLE} (body) VALUES (%s)", (bodies[0],))
            else:
                cur.execute(
                    f"INSERT INTO {FLOOR_TABLE} (body) SELECT unnest(%s::text[])", (bodies,)
                )

    def close(self) -> None:
        self.conn.close()


def open_store(url: str) -> FloorStore:
    """sqlite:///path or postgresql://... (the engine's URL forms)."""
    if url.startswith("sqlite:///"):
        return SqliteStore(url.removeprefix("sqlite:///"))
    return PostgresStore(url)


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def fresh_postgres_database(server_url: str, name: str) -> str:
    """CREATE DATABASE `name` on the server; the URL of the new database."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def server_version(url: str) -> str:
    if url.startswith("sqlite:"):
        return f"SQLite {sqlite3.sqlite_version}"
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0] if row else '?'}"


class ThrowawayPostgres:
    """scripts/postgres-throwaway: a disposable local server, stopped on close()."""

    def __init__(self, project_root: Path, directory: Path) -> None:
        self.script = project_root / "scripts" / "postgres-throwaway"
        self.directory = directory
        self.url: str | None = None

    def start(self) -> str:
        out = subprocess.run(
            [str(self.script), "start", str(self.directory)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ},
        )
        self.url = out.stdout.strip().splitlines()[-1]
        return self.url

    def close(self) -> None:
        if self.url:
            subprocess.run([str(self.script), "stop", str(self.directory)], check=False)
            self.url = None
