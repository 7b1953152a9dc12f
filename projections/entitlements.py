"""What an app user may do: now, from the grants read model; at any other instant, derived.

Questions about now are answered by the projector's work (`projections/grants.py`): one indexed
read. Questions about another instant (`at`, `known_at`, a catalogue preview) are derived by
the pure rules (`domain/rules.py`) from the buyer-facts read model as it stands: a read-only
snapshot that never waits for the projector, nor makes it or another reader wait.

An auditor asks about many instants of one customer; a long history (`HISTORY_KEPT_FROM` facts
or more) is read and sorted once, then kept while the customer's grants row keeps its revision
(a batch that changed anything the customer's answers read gives it a new one).
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from domain.catalogue import Catalogue
from domain.outcomes import Derivation, PermissionStatus
from domain.policy import AppPolicy
from domain.rules import FactHistory, derive
from projections.buyer_facts import CustomerFacts, customer_facts, customids_of_app
from projections.follower import ReadModelReader
from projections.generations import GenerationCursor
from projections.grants import (
    PERMISSIONS,
    Answer,
    NotDerivedYet,
    Question,
    answers_of,
    answers_statement,
    catalogue_of,
    catalogues_statement,
    never_asked,
    revision_of,
)

HISTORY_KEPT_FROM = 500  # facts; a shorter history is read and sorted in about a millisecond
KEPT_HISTORIES = 64  # long histories kept


@dataclass(frozen=True)
class CatalogueDiff:
    gains: dict[str, list[str]]  # permission id -> customids that would gain it
    losses: dict[str, list[str]]
    customids: int  # how many were compared


@dataclass(frozen=True)
class _Kept:
    generation: int
    revision: int
    found: CustomerFacts  # as read: a later read brings it up to date (`customer_facts`)
    history: FactHistory


def _valid(permissions: tuple[PermissionStatus, ...]) -> set[str]:
    return {p.permission_id for p in permissions if p.is_valid}


class CatalogueHistory(Protocol):
    """Each app's catalogue as it stood at an instant (`adapters/usecases/catalogues.py`)."""

    def as_of(self, app_id: str, known_at: float | None) -> Catalogue: ...


class AppSettings(Protocol):
    """What an answer needs of an app's settings (`adapters/config.AppConfig`): its policy."""

    @property
    def policy(self) -> AppPolicy: ...


class Entitlements:
    def __init__(
        self,
        reader: ReadModelReader,
        catalogues: CatalogueHistory,
        apps: Mapping[str, AppSettings],
        clock: Callable[[], float],
    ) -> None:
        self.reader = reader
        self.catalogues = catalogues
        self.apps = apps
        self.clock = clock  # what "now" is (tests move it)
        self.history_kept_from = HISTORY_KEPT_FROM
        self._kept: OrderedDict[tuple[str, str], _Kept] = OrderedDict()
        self._kept_lock = threading.Lock()

    def now(self, app_id: str, customid: str, kind: str = PERMISSIONS) -> bytes | None:
        """The projected answer about now (`projections/grants.answers_of`); raises
        NotDerivedYet for a row not derived yet."""
        (answer,) = self.now_many([(app_id, customid, kind)])
        if isinstance(answer, NotDerivedYet):
            raise answer
        return answer

    def now_many(self, questions: Sequence[Question]) -> list[Answer]:
        """Several answers about now in one statement (two when someone asked about has no
        row and the catalogue must say "never bought"): a round trip for many questions."""
        rows = self.reader.rows(*answers_statement(questions))
        apps = sorted(never_asked(rows, questions))
        catalogues = dict(self.reader.rows(catalogues_statement(apps), apps)) if apps else {}
        return answers_of(rows, questions, catalogues)

    def permissions(
        self, app_id: str, customid: str, at: int, known_at: float | None = None
    ) -> tuple[PermissionStatus, ...]:
        return self.derivation(app_id, customid, at, known_at).permissions

    def derivation(
        self, app_id: str, customid: str, at: int, known_at: float | None = None
    ) -> Derivation:
        """Derived at `at` (Stripe's clock) from the facts recorded by `known_at` (ours; None:
        all), with the catalogue of then."""
        with self.reader.reading() as cursor:
            history = self._history(cursor, app_id, customid)
            current = catalogue_of(cursor, app_id) if known_at is None else None
        catalogue = current or self.catalogues.as_of(app_id, known_at)
        return derive(history.known_by(known_at), catalogue, self.apps[app_id].policy, at)

    def history(self, app_id: str, customid: str) -> FactHistory:
        """The facts of `customid`'s buyers (and guest payments), sorted, as they stand."""
        with self.reader.reading() as cursor:
            return self._history(cursor, app_id, customid)

    def _history(self, cursor: GenerationCursor, app_id: str, customid: str) -> FactHistory:
        key = (app_id, customid)
        revision = revision_of(cursor, app_id, customid)
        kept = self._kept.get(key)
        if kept is not None and kept.generation == cursor.generation:
            if revision is not None and kept.revision == revision:
                return kept.history
            found = customer_facts(cursor, app_id, customid, since=kept.found)
        else:
            found = customer_facts(cursor, app_id, customid)
        history = FactHistory.of(found.facts, found.recorded)
        if revision is not None and len(history) >= self.history_kept_from:
            with self._kept_lock:
                self._kept.pop(key, None)
                self._kept[key] = _Kept(cursor.generation, revision, found, history)
                while len(self._kept) > KEPT_HISTORIES:
                    self._kept.popitem(last=False)
        return history

    def preview_catalogue(self, app_id: str, proposed: Catalogue, at: int) -> CatalogueDiff:
        """Who would gain and who would lose which permission if `proposed` replaced the
        app's catalogue now. Changes nothing."""
        policy = self.apps[app_id].policy
        gains: dict[str, list[str]] = defaultdict(list)
        losses: dict[str, list[str]] = defaultdict(list)
        with self.reader.reading() as cursor:
            customids = customids_of_app(cursor, app_id)
            current = catalogue_of(cursor, app_id)
        for customid in customids:
            with self.reader.reading() as cursor:
                found = customer_facts(cursor, app_id, customid)
            facts = FactHistory.of(found.facts, found.recorded)
            before = _valid(derive(facts, current, policy, at).permissions)
            after = _valid(derive(facts, proposed, policy, at).permissions)
            for permission_id in sorted(after - before):
                gains[permission_id].append(customid)
            for permission_id in sorted(before - after):
                losses[permission_id].append(customid)
        return CatalogueDiff(dict(gains), dict(losses), len(customids))
