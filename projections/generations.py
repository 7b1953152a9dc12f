"""Generations of a read model: rebuild a new one beside the live one, then switch.

A projection's tables are named per generation (`buyer_facts` for the first, then
`buyer_facts_g2`, ...); SQL is written with the base names and `GenerationCursor` renames them.
`projection_generations` says which generation answers queries. A rebuild fills generation N+1
from the first event while N keeps answering and keeps following the log; once N+1 has caught up,
one UPDATE makes it the active one, and every follower moves to it at its next batch (each
generation has its own tracking position, so nothing is lost or applied twice across the switch).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from projections.store import Cursor, RewritingCursor

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS projection_generations ("
    "name TEXT PRIMARY KEY, generation INTEGER NOT NULL)"
)
FIRST_GENERATION = 1


class GenerationCursor(RewritingCursor):
    """A cursor on one generation's tables: base table names in SQL become generation names."""

    def __init__(self, cursor: Cursor, names: Sequence[str], generation: int) -> None:
        self.generation = generation
        names = tuple(names)

        super().__init__(cursor, lambda sql: renamed(names, generation, sql))


def renamed(names: tuple[str, ...], generation: int, sql: str) -> str:
    """`sql` on generation `generation`'s tables."""
    return _renamed(names, generation, sql) if generation != FIRST_GENERATION else sql


@functools.lru_cache(maxsize=4096)  # a rebuild runs the same few statements millions of times
def _renamed(names: tuple[str, ...], generation: int, sql: str) -> str:
    end = suffix(generation)
    return _pattern(names).sub(lambda m: m.group(1) + end, sql)


@functools.lru_cache(maxsize=64)
def _pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")


def suffix(generation: int) -> str:
    return "" if generation == FIRST_GENERATION else f"_g{generation}"


def tracking_name(projection: str, generation: int) -> str:
    return f"{projection}@g{generation}"


ACTIVE_GENERATION = "SELECT generation FROM projection_generations WHERE name = ?"


def active_generation(cursor: Cursor, name: str) -> int:
    cursor.execute(ACTIVE_GENERATION, (name,))
    row = cursor.fetchone()
    return int(row[0]) if row else FIRST_GENERATION


def activate(cursor: Cursor, name: str, old: int, new: int) -> bool:
    """Switch `name` from generation `old` to `new`; False if someone else switched first."""
    cursor.execute(
        "INSERT INTO projection_generations (name, generation) VALUES (?, ?) "
        "ON CONFLICT (name) DO NOTHING",
        (name, old),
    )
    cursor.execute(
        "UPDATE projection_generations SET generation = ? WHERE name = ? AND generation = ?",
        (new, name, old),
    )
    return cursor.rowcount == 1


def drop_generation(cursor: Cursor, tables: Sequence[str], generation: int) -> None:
    for table in tables:
        cursor.execute(f"DROP TABLE IF EXISTS {table}{suffix(generation)}")
