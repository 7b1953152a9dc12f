"""Subscriptions, purchases and permissions of an app user, derived at the instant asked.

Validity depends on the instant (a period ends, a grace period runs out), so these are never
frozen at write time: they are derived from the buyer-facts read model by the pure rules in
`domain/rules.py`, at `at` (default now), from the facts recorded by `known_at` (default all).

An auditor asks about many instants of one customer; a long history (`HISTORY_KEPT_FROM` facts
or more) is read and sorted once, then kept on the answer cache's `HISTORIES` shelf until an
event touches it (the same floors as cached answers: `projections/answers.py`).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from adapters.catalogues import Catalogues
from adapters.config import AppConfig
from domain.catalogue import Catalogue
from domain.clock import Instant
from domain.rules import Derivation, FactHistory, PermissionStatus, derive
from projections.answers import (
    HISTORIES,
    Answer,
    AnswerCache,
    Stamp,
    floor_keys_of,
    unseen_write_touches,
)
from projections.buyer_facts import (
    Claim,
    CustomerFacts,
    buyers_of_customid,
    claims_of,
    conflicts,
    customer_facts,
    customids_of_app,
    facts_of_customid,
)
from projections.follower import Follower

HISTORY_KEPT_FROM = 500  # facts; a shorter history is read and sorted in about a millisecond
KEPT_READS = 64  # long histories' last reads kept to be brought up to date (`customer_facts`)


@dataclass(frozen=True)
class LinkedCustomer:
    buyer_key: str
    claims: tuple[Claim, ...]
    conflicts: tuple[Claim, ...]


@dataclass(frozen=True)
class Subscriber:
    customid: str
    customers: tuple[LinkedCustomer, ...]
    derivation: Derivation


@dataclass(frozen=True)
class CurrentPermissions:
    """Permissions now, with what an answer cache needs to know how long they hold."""

    permissions: tuple[PermissionStatus, ...]
    stamp: Stamp  # the read model's (generation, position) before it was read; the catalogue
    # used is the one current at that position
    at: int
    valid_until: int | None  # see domain/clock.py
    depends_on: tuple[str, ...]  # buyer keys read: linked buyers and guest payment keys


@dataclass(frozen=True)
class CatalogueDiff:
    gains: dict[str, list[str]]  # permission id -> customids that would gain it
    losses: dict[str, list[str]]
    customids: int  # how many were compared


def _valid(permissions: tuple[PermissionStatus, ...]) -> set[str]:
    return {p.permission_id for p in permissions if p.is_valid}


class Entitlements:
    def __init__(
        self,
        follower: Follower,
        catalogues: Catalogues,
        apps: dict[str, AppConfig],
        clock: Callable[[], float] = time.time,
        answers: AnswerCache | None = None,
    ) -> None:
        self.follower = follower
        self.catalogues = catalogues
        self.apps = apps
        self.clock = clock  # what "now" is (tests move it)
        self.answers = answers  # keeps long histories (None: read every time)
        self.history_kept_from = HISTORY_KEPT_FROM
        # The last read of each long history, by (app id, customid), with the generation of the
        # read model it was read from: the next read after a write reads only what changed.
        self._reads: dict[tuple[str, str], tuple[int, CustomerFacts]] = {}
        self._reads_lock = threading.Lock()

    def permissions(
        self, app_id: str, customid: str, at: int, known_at: float | None = None
    ) -> tuple[PermissionStatus, ...]:
        return self.derivation(app_id, customid, at, known_at).permissions

    def permissions_now(self, app_id: str, customid: str) -> CurrentPermissions:
        """Read your writes: every write this process saved before the call is seen. When the
        answer cache knows what those writes may touch, the read model is caught up only if
        one of them may touch this answer and is not in the rows read (under a steady stream
        of webhooks, catching up for everyone's writes made every query wait for a batch)."""
        at = Instant(int(self.clock()))
        if self.answers is None:
            self._fresh()
        saved = [] if self.answers is None else self.answers.saved_unreported()  # before reading
        stamp, facts, depends_on = self._read_now(app_id, customid)
        if unseen_write_touches(saved, stamp[1], floor_keys_of(app_id, customid, depends_on)):
            self._fresh()
            stamp, facts, depends_on = self._read_now(app_id, customid)
        catalogue = self.catalogues.current_at(app_id, stamp[1])
        derivation = derive(facts, catalogue, self.apps[app_id].policy, at)
        return CurrentPermissions(
            derivation.permissions, stamp, int(at), at.next_change, depends_on
        )

    def _read_now(self, app_id: str, customid: str) -> tuple[Stamp, FactHistory, tuple[str, ...]]:
        with self.follower.reading() as cursor:
            stamp = self.follower.observe(cursor)  # read first: a later write only makes it older
            found = self._customer_facts(cursor, stamp, app_id, customid)
        # Sorted without hashing every fact, as the rules would (for 10,000 facts: 2 ms, not 20).
        return stamp, FactHistory.of(found.facts, found.recorded), found.depends_on()

    def derivation(
        self, app_id: str, customid: str, at: int, known_at: float | None = None
    ) -> Derivation:
        self._fresh()
        facts = self.history(app_id, customid).known_by(known_at)
        catalogue = self.catalogues.as_of(app_id, known_at)
        return derive(facts, catalogue, self.apps[app_id].policy, at)

    def history(self, app_id: str, customid: str) -> FactHistory:
        """The facts of `customid`'s buyers (and guest payments), sorted, from the read model
        as it stands; a long history is kept until an event touches it."""
        key = (app_id, customid)
        with self.follower.reading() as cursor:
            stamp = self.follower.observe(cursor)  # read first: a later write only makes it older
            if self.answers is not None:
                kept = self.answers.get(key, stamp, 0, HISTORIES)
                if kept is not None:
                    return kept
            found = self._customer_facts(cursor, stamp, app_id, customid)
        history = FactHistory.of(found.facts, found.recorded)
        if self.answers is not None and len(history) >= self.history_kept_from:
            kept = Answer(history, stamp, 0, None, app_id, customid, found.depends_on())
            self.answers.put(key, kept, HISTORIES)
        return history

    def _customer_facts(self, cursor, stamp: Stamp, app_id: str, customid: str) -> CustomerFacts:
        """The customid's facts; a long history is brought up to date from its last read."""
        key = (app_id, customid)
        last = self._reads.get(key)
        since = last[1] if last is not None and last[0] == stamp[0] else None
        found = customer_facts(cursor, app_id, customid, since)
        if len(found.facts) >= self.history_kept_from:
            with self._reads_lock:
                self._reads.pop(key, None)  # the newest last, so the oldest goes first
                self._reads[key] = (stamp[0], found)
                while len(self._reads) > KEPT_READS:
                    del self._reads[next(iter(self._reads))]
        return found

    def subscriber(self, app_id: str, customid: str, at: int) -> Subscriber | None:
        """None when no Stripe customer or payment was ever linked to `customid`."""
        self._fresh()
        with self.follower.reading() as cursor:
            keys = buyers_of_customid(cursor, app_id, customid)
            customers = tuple(self._customer(cursor, app_id, key) for key in keys)
        if not customers:
            return None
        return Subscriber(customid, customers, self.derivation(app_id, customid, at))

    def preview_catalogue(self, app_id: str, proposed: Catalogue, at: int) -> CatalogueDiff:
        """Who would gain and who would lose which permission if `proposed` replaced the
        app's catalogue now. Changes nothing."""
        self._fresh()
        current = self.catalogues.current(app_id)
        policy = self.apps[app_id].policy
        gains: dict[str, list[str]] = defaultdict(list)
        losses: dict[str, list[str]] = defaultdict(list)
        with self.follower.reading() as cursor:
            customids = customids_of_app(cursor, app_id)
        for customid in customids:
            with self.follower.reading() as cursor:
                facts = [s.fact for s in facts_of_customid(cursor, app_id, customid)]
            before = _valid(derive(facts, current, policy, at).permissions)
            after = _valid(derive(facts, proposed, policy, at).permissions)
            for permission_id in sorted(after - before):
                gains[permission_id].append(customid)
            for permission_id in sorted(before - after):
                losses[permission_id].append(customid)
        return CatalogueDiff(dict(gains), dict(losses), len(customids))

    def _customer(self, cursor, app_id: str, buyer_key: str) -> LinkedCustomer:
        claims = claims_of(cursor, app_id, buyer_key)
        return LinkedCustomer(buyer_key, tuple(claims), tuple(conflicts(claims)))

    def _fresh(self) -> None:
        self.follower.catch_up_if_behind()
