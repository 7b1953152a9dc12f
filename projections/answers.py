"""Answers to "what may user X do now?", kept while they cannot have changed.

Permission queries far outnumber webhooks, and between two writes that concern a user the same
question gets the same answer until the clock reaches the instant at which the rules would answer
differently. An answer is kept with what it was derived from:
- `stamp`: the read model's (generation, position) read before its rows, so the answer reflects
  every event up to that position (and maybe some later ones);
- its app, its customid and the buyer keys whose facts or links it read: the buyers linked to
  the customid and every guest payment key considered, with or without a history yet, since a
  later refund or dispute lands on that key (`CustomerFacts.depends_on` in buyer_facts.py);
- `valid_until`: the rules' own bound on how long the answer holds (`domain/clock.py`).

Invalidation by floors. After each committed batch, the follower reports what its events touched
(`Touched`: a buyer and every customid it was linked to or claimed, before and after; an app's
catalogue; or everything) and the batch's end position E; each touched key's floor rises to E.
A range this process did not apply itself (another process's follower did) is judged from the
rows it left (`projections/touched.py`), or, when it cannot be (too long), is
reported as unknown: the global floor rises to its end. An answer stamped (g, p) holds iff
- the read model is still on generation g (a rebuild switched: every row may differ);
- p >= the global floor and the floors of its app's catalogue, its customid and its buyer keys;
- every event up to the position the caller observed has been reported (the `horizon`): a
  query thread may read a position this process's follower committed but has not reported yet;
- the caller observed the read model recently (`Follower.settled`, else the stamp passed in
  is None), and at <= now < valid_until;
- no write of this process that is not reported yet may touch it. The event log tells the cache
  of each write before saving it (`writing`), with what it may touch: for a webhook its buyer and
  every customid its payload carries (`StripeEnvelope.claimed`: a superset of what its facts
  claim), for any other write everything. Once saved (`written`), the write stays pending until
  the follower reports a batch past its last position (read-your-writes, without holding back
  the answers it cannot touch).

Why it is safe: every event the answer did not see has a position above p. If it could change
the answer, it changed the facts or the link of a buyer the answer read, linked a new buyer to
the customid or unlinked one (it then touches the customid, before and after), created facts on
a guest key the answer considered, or changed the catalogue: each raises a floor above p once
reported, and nothing is served past an unreported position. Floors only rise, and are checked
when an answer is read, never when it is stored, so an answer stored late (derived before a
batch was reported) is still judged against that batch.

Two shelves share the floors: `ANSWERS` (rendered answers, many and small) and `HISTORIES` (a
long history's facts, sorted once, for audit queries at any instant: few and large, so bounded
apart).

Memory: floors at or below the global floor are dropped; past `max_floors` keys the global floor
rises to the newest reported position and the map is emptied (every older answer then misses).
Readers take no lock: writers publish in an order that lets a reader trust what it reads (see
`_holds`), and only replace the floor map, never shrink it in place.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from domain.aggregates import catalogue_id

Stamp = tuple[int, int]  # (generation, position) of the read model
ANSWERS, HISTORIES = "answers", "histories"  # the shelves


@dataclass(frozen=True, slots=True)
class Touched:
    """What one applied event may have changed for answers (reported by the projection)."""

    app_id: str = ""
    buyer_key: str | None = None
    customids: tuple[str, ...] = ()  # linked to or claimed by the buyer, before and after
    catalogue: UUID | None = None  # an app's catalogue aggregate (its events name no app id)
    everything: bool = False  # an event the projection does not know: assume the worst

    def floor_keys(self) -> Iterator[Hashable]:
        if self.catalogue is not None:
            yield ("catalogue", str(self.catalogue))  # a str caches its hash; a UUID does not
        if self.buyer_key is not None:
            yield ("buyer", self.app_id, self.buyer_key)
        for customid in self.customids:
            yield ("customid", self.app_id, customid)


EVERYTHING = Touched(everything=True)


@functools.lru_cache(maxsize=1024)
def _catalogue_key(app_id: str) -> Hashable:
    return ("catalogue", str(catalogue_id(app_id)))


def floor_keys_of(app_id: str, customid: str, buyer_keys: Iterable[str]) -> tuple[Hashable, ...]:
    """The keys whose floors an answer about `customid` depends on."""
    return (
        _catalogue_key(app_id),
        ("customid", app_id, customid),
        *(("buyer", app_id, key) for key in buyer_keys),
    )


SavedWrite = tuple[int, tuple[Hashable, ...] | None]  # last position, keys it may touch


def unseen_write_touches(writes: Iterable[SavedWrite], position: int, keys: Iterable) -> bool:
    """Whether one of `writes` lies past `position` (rows read there do not hold it) and may
    touch one of `keys`."""
    wanted = set(keys)
    return any(
        last > position and (touched is None or not wanted.isdisjoint(touched))
        for last, touched in writes
    )


@dataclass(frozen=True)
class Answer:
    value: Any  # what the caller keeps, e.g. the rendered response body
    stamp: Stamp
    at: int  # the instant it was derived for
    valid_until: int | None  # the first instant it may be wrong; None: until something is written
    app_id: str
    customid: str
    buyer_keys: tuple[str, ...] = ()  # linked buyers and every guest payment key considered
    floor_keys: tuple[Hashable, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = floor_keys_of(self.app_id, self.customid, self.buyer_keys)
        object.__setattr__(self, "floor_keys", keys)

    def in_time(self, now: int) -> bool:
        return self.at <= now and (self.valid_until is None or now < self.valid_until)


class AnswerCache:
    """A bounded map of answers; the oldest entry goes first when it is full. Entries are
    replaced, never updated in place, so readers need no lock."""

    def __init__(
        self, max_entries: int = 100_000, max_floors: int = 100_000, max_histories: int = 64
    ) -> None:
        self.max_entries = max_entries
        self.max_floors = max_floors
        self._bounds = {ANSWERS: max_entries, HISTORIES: max_histories}
        self._shelves: dict[str, dict[Hashable, Answer]] = {ANSWERS: {}, HISTORIES: {}}
        self._entries = self._shelves[ANSWERS]
        self._lock = threading.Lock()  # writers only: short sections, never any I/O
        self._floors: dict[Hashable, int] = {}  # key -> end of the last batch that touched it
        self._global_floor = 0
        self._top = 0  # the highest floor in `_floors`
        self._horizon = 0  # every event up to here was reported
        # This process's writes not reported yet: token -> (their last position, or None while
        # being saved; the keys they may touch, None: everything), and how many of them touch
        # each key (what readers look at: one lookup per key of an answer, no lock).
        self._pending: dict[int, tuple[int | None, tuple[Hashable, ...] | None]] = {}
        self._pending_keys: dict[Hashable, int] = {}
        self._pending_everything = 0
        self._tokens = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, stamp: Stamp | None, now: int, shelf: str = ANSWERS) -> Any | None:
        """The answer kept for `key` if it still holds; `stamp` is the read model's (generation,
        position) as the caller last observed it (None: it may be stale)."""
        answer = self._shelves[shelf].get(key)
        if answer is not None and stamp is not None and self._holds(answer, stamp, now):
            self.hits += 1
            return answer.value
        self.misses += 1
        return None

    def _holds(self, answer: Answer, stamp: Stamp, now: int) -> bool:
        # Read in the reverse of the order writers publish in: this process's pending writes
        # (dropped after the horizon passed them), the horizon (raised after the floors of its
        # batch), then the floor map (replaced after the global floor rose), then the global
        # floor. Whatever a reader sees is then at least as strict as the state at the instant
        # it read the pending writes.
        pending = self._pending_keys
        if self._pending_everything or any(key in pending for key in answer.floor_keys):
            return False  # a write of this process may change it, and is not projected yet
        if stamp[1] > self._horizon:
            return False  # events up to the observed position are not all reported yet
        floors = self._floors
        position = answer.stamp[1]
        if answer.stamp[0] != stamp[0] or position < self._global_floor:
            return False
        if not answer.in_time(now):
            return False
        floor = floors.get
        return all(floor(key, 0) <= position for key in answer.floor_keys)

    def put(self, key: Hashable, answer: Answer, shelf: str = ANSWERS) -> None:
        entries, bound = self._shelves[shelf], self._bounds[shelf]
        if bound <= 0:
            return
        with self._lock:
            entries.pop(key, None)
            while len(entries) >= bound:
                entries.pop(next(iter(entries)))
            entries[key] = answer

    def applied(self, touched: Iterable[Touched] | None, start: int, end: int) -> None:
        """The follower committed the events in (start, end]; `touched` is what they touched,
        None when this process did not apply them (another process did): all of it, then."""
        with self._lock:
            if touched is None:
                self._raise_global_floor(end)
            else:
                floors = self._floors
                for change in touched:
                    if change.everything:
                        self._raise_global_floor(end)
                        floors = self._floors
                        continue
                    for key in change.floor_keys():
                        if floors.get(key, 0) < end:
                            floors[key] = end
                if end > self._top:
                    self._top = end
                if len(floors) > self.max_floors:
                    self._raise_global_floor(max(end, self._horizon))
            if end > self._horizon:
                self._horizon = end  # the floors of this range are in place
            done = [t for t, (last, _) in self._pending.items() if last is not None and last <= end]
            for token in done:  # last: what they touched is in the floors now
                self._forget(token)

    # --- this process's writes, between their save and their report -----------------------

    def writing(self, touches: tuple[Touched, ...] | None) -> int:
        """A write is about to be saved (None: it may touch anything); until the follower
        reports it, no answer it may touch is served. Returns a token for `written`."""
        changes = touches or (EVERYTHING,)
        keys = (
            None
            if any(c.everything for c in changes)
            else tuple({key for change in changes for key in change.floor_keys()})
        )
        with self._lock:
            self._tokens += 1
            token = self._tokens
            self._pending[token] = (None, keys)
            if keys is None:
                self._pending_everything += 1
            for key in keys or ():
                self._pending_keys[key] = self._pending_keys.get(key, 0) + 1
            return token

    def written(self, token: int, last_position: int) -> None:
        """The write is saved; its events end at `last_position`."""
        with self._lock:
            if token not in self._pending:
                return
            if last_position > self._horizon:
                self._pending[token] = (last_position, self._pending[token][1])
            else:  # already reported (or nothing saved)
                self._forget(token)

    def saved_unreported(self) -> list[SavedWrite]:
        """This process's saved writes the follower has not reported yet: each one's last
        position and the keys it may touch (None: anything)."""
        with self._lock:
            return [(last, keys) for last, keys in self._pending.values() if last is not None]

    def not_written(self, token: int) -> None:
        with self._lock:
            if token in self._pending:
                self._forget(token)

    def _forget(self, token: int) -> None:
        """Under the lock: the write is reported (or was never saved)."""
        _, keys = self._pending.pop(token)
        if keys is None:
            self._pending_everything -= 1
        for key in keys or ():
            count = self._pending_keys[key] - 1
            if count:
                self._pending_keys[key] = count
            else:
                del self._pending_keys[key]

    def _raise_global_floor(self, position: int) -> None:
        if position <= self._global_floor:
            return
        self._global_floor = position  # first: a reader that still sees the old map sees this
        if position >= self._top:
            self._floors = {}
        else:
            self._floors = {k: v for k, v in self._floors.items() if v > position}

    @property
    def floors(self) -> int:
        """How many per-key floors are kept (bounded by `max_floors`)."""
        return len(self._floors)

    def __len__(self) -> int:
        return len(self._entries)

    def holds_anything(self) -> bool:
        """Whether any answer or history is kept: when none is, what a range of events
        touched changes nothing here, and need not be worked out."""
        return any(self._shelves.values())
