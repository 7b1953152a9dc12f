"""Answers to "what may user X do now?", kept while they cannot have changed.

Permission queries far outnumber webhooks, and between two writes the same question gets the
same answer until the clock reaches the instant at which the rules would answer differently.
An answer is kept with:
- the read model's (generation, position) it was derived from: any new event, from this process
  or another, moves it, and every older answer is then stale (a catalogue change is an event in
  the same log, and answers use the catalogue current at their position);
- `valid_until`: the rules' own bound on how long the answer holds (`domain/clock.py`).

Staleness: writes of this process are always seen (`Follower.settled` refuses while one is not
projected); writes of other processes once this process's follower has seen the position move
(its background loop polls), as for every other read.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

Stamp = tuple[int, int]  # (generation, position) of the read model


@dataclass(frozen=True)
class Answer:
    value: Any  # what the caller keeps, e.g. the rendered response body
    stamp: Stamp
    at: int  # the instant it was derived for
    valid_until: int | None  # the first instant it may be wrong; None: until something is written

    def holds(self, stamp: Stamp | None, now: int) -> bool:
        return (
            stamp == self.stamp
            and self.at <= now
            and (self.valid_until is None or now < self.valid_until)
        )


class AnswerCache:
    """A bounded map of answers; the oldest entry goes first when it is full. Entries are
    replaced, never updated in place, so readers need no lock."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[Hashable, Answer] = {}
        self._lock = threading.Lock()  # writers only
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, stamp: Stamp | None, now: int) -> Any | None:
        answer = self._entries.get(key)
        if answer is not None and answer.holds(stamp, now):
            self.hits += 1
            return answer.value
        self.misses += 1
        return None

    def put(self, key: Hashable, answer: Answer) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries.pop(key, None)
            while len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = answer

    def __len__(self) -> int:
        return len(self._entries)
