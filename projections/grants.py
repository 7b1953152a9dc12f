"""The grants read model: what each app user may do now, kept current by the projector.

Per app and customid, a row holds the answers the API gives about "now", rendered in their
shapes (`projections/shapes.py`): `GET /v1/permissions` without and with `explain`, and
`GET /v1/subscriber`. A question about now is then one indexed read; nothing is derived on the
request path. Beside them:
- `due`: when the row must be derived again. The rules say when their answer next changes by
  time alone (a period end past the leeway, a grace end, a pass running out, a `cancel_at`:
  `domain/clock.Instant`); 0 means now (a catalogue or policy change, a first start on an older
  database). The projector derives due rows in chunks (`derive_due`): the rows are the
  schedule, so after a restart nothing due is skipped.
- `revision`: the position of the batch whose events last changed what the row was derived
  from (facts, links, guest payments). Readers that keep a customer's sorted facts
  (`projections/entitlements.py`) know from it whether those are still current.

After each batch of events (`batch`), the customids the batch touched (`projections/touched.py`)
are derived again in the same transaction: the facts and the answers commit together, so no
reader ever sees one ahead of the other. A catalogue change makes its app's rows due now.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from domain.aggregates import AppCatalogue
from domain.catalogue import Catalogue
from domain.clock import Instant
from domain.policy import AppPolicy
from domain.rules import FactHistory, derive
from projections.announcements import Announcer, CauseOf, batch_causes, due_causes, rebuilt
from projections.buyer_facts import (
    PAYMENT_PREFIX,
    Claim,
    Facts,
    claims_of_buyers,
    conflicts,
    customids_naming,
    facts_of_customids,
    json_keys,
)
from projections.shapes import LinkedCustomer, Subscriber, permission_json, subscriber_json
from projections.store import Cursor, placeholders
from projections.touched import Touched

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS customer_grants (
        app_id TEXT NOT NULL, customid TEXT NOT NULL,
        permissions TEXT, explained TEXT, subscriber TEXT,
        due BIGINT, revision BIGINT NOT NULL, derived_at BIGINT NOT NULL,
        PRIMARY KEY (app_id, customid))""",
    "CREATE INDEX IF NOT EXISTS customer_grants_due ON customer_grants (due) WHERE due IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS app_catalogues (
        catalogue_uuid TEXT PRIMARY KEY, app_id TEXT NOT NULL, catalogue TEXT NOT NULL,
        position BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS app_catalogues_app ON app_catalogues (app_id)",
    # The policy each app's rows were derived with (the configuration may change it).
    "CREATE TABLE IF NOT EXISTS app_policies (app_id TEXT PRIMARY KEY, policy TEXT NOT NULL)",
]
EMPTY_CATALOGUE = '{"permissions": [], "skus": []}'
DUE_CHUNK = 200  # due rows derived per transaction

UPSERT = (
    "INSERT INTO customer_grants VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (app_id, customid) DO UPDATE SET permissions = excluded.permissions, "
    "explained = excluded.explained, subscriber = excluded.subscriber, due = excluded.due, "
    "revision = excluded.revision, derived_at = excluded.derived_at"
)

# What a row serves: the column for each kind of answer.
PERMISSIONS, EXPLAINED, SUBSCRIBER = "permissions", "explained", "subscriber"
KINDS = (PERMISSIONS, EXPLAINED, SUBSCRIBER)  # the answers a row holds


class NotDerivedYet(LookupError):
    """The customid has a row the projector has not derived yet (it is due now)."""


@dataclass
class _Batch:
    touched: list[Touched] = field(default_factory=list)
    end: int = 0  # the batch's last position
    everything: bool = False  # an event of an unknown kind: every row is due
    applied: list[tuple[Touched, Any]] = field(default_factory=list)  # why rows are derived


class GrantsProjection:
    """Derives and writes the grants of the customids each batch touched."""

    name = "customer_grants"
    tables = ("customer_grants", "app_catalogues", "app_policies")
    indexes = ("customer_grants_due", "app_catalogues_app")

    def __init__(self, policies: Mapping[str, AppPolicy], clock: Callable[[], float]) -> None:
        self.policies = policies
        self.clock = clock  # what "now" is when an answer is derived (tests move it)
        # Generations in a rebuild's bulk pass: nothing derived per batch, everyone once at its
        # end (`seed`, then `derive_due`), rather than a customer once per batch of its events.
        self.deferred: set[int] = set()
        self._batches: dict[Cursor, _Batch] = {}
        # Outbound webhooks: told of every answer derived again (projections/announcements.py).
        self.announcer: Announcer | None = None

    @contextlib.contextmanager
    def bulk(self, generation: int) -> Iterator[None]:
        self.deferred.add(generation)
        try:
            yield
        finally:
            self.deferred.discard(generation)

    def _deferred(self, cursor: Cursor) -> bool:
        return getattr(cursor, "generation", None) in self.deferred

    def create_tables(self, cursor: Cursor) -> None:
        for statement in SCHEMA:
            cursor.execute(statement)
        if self.announcer is not None:
            self.announcer.create_tables(cursor)

    @contextlib.contextmanager
    def batch(self, cursor: Cursor) -> Iterator[None]:
        """Within this block the batch's events are applied (`apply`); when it ends, after the
        facts are written, the customids they touched are derived again."""
        state = _Batch()
        self._batches[cursor] = state
        try:
            yield
            if state.everything:
                cursor.execute("UPDATE customer_grants SET due = 0")
            elif not self._deferred(cursor):
                affected = affected_customids(cursor, state.touched)
                causes = batch_causes(state.applied)
                self.derive(cursor, sorted(affected), revision=state.end, causes=causes)
        finally:
            self._batches.pop(cursor, None)

    def apply(self, cursor: Cursor, position: int, event: Any, touched: Touched | None) -> None:
        """Note what the event touched (catalogue events are this read model's own rows)."""
        if isinstance(event, AppCatalogue.Event):
            self._apply_catalogue(cursor, position, event)
            return
        state = self._batches.get(cursor)
        if state is None:  # outside a batch: one event at a time
            if touched is not None and not self._deferred(cursor):
                causes = batch_causes([(touched, event)])
                self.derive(cursor, sorted(affected_customids(cursor, [touched])), position, causes)
            return
        state.end = max(state.end, position)
        if touched is not None:
            state.everything |= touched.everything
            state.touched.append(touched)
            state.applied.append((touched, event))

    def _apply_catalogue(self, cursor: Cursor, position: int, event: AppCatalogue.Event) -> None:
        uuid = str(event.originator_id)
        if isinstance(event, AppCatalogue.Created):
            cursor.execute(
                "INSERT INTO app_catalogues VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (uuid, event.app_id, EMPTY_CATALOGUE, position),
            )
        elif isinstance(event, AppCatalogue.Replaced):
            cursor.execute(
                "UPDATE app_catalogues SET catalogue = ?, position = ? WHERE catalogue_uuid = ?",
                (event.catalogue, position, uuid),
            )
            cursor.execute(
                "UPDATE customer_grants SET due = 0 WHERE app_id = "
                "(SELECT app_id FROM app_catalogues WHERE catalogue_uuid = ?)",
                (uuid,),
            )

    # --- deriving ----------------------------------------------------------------------------

    def derive(
        self,
        cursor: Cursor,
        customids: Iterable[tuple[str, str]],
        revision: int | None,
        causes: CauseOf | None = None,
    ) -> None:
        """Derive the answers of these (app id, customid) now and write them; `revision` None:
        what they were derived from is unchanged (time, a catalogue or a policy changed).
        `causes` says why, for the changes announced (`_announce`)."""
        now = int(self.clock())
        rows, gone = self.derived(cursor, customids, revision, now)
        self._announce(cursor, rows, gone, causes, now)
        write(cursor, rows, gone)

    def derived(
        self,
        cursor: Cursor,
        customids: Iterable[tuple[str, str]],
        revision: int | None,
        now: int,
    ) -> tuple[list[tuple[Any, ...]], list[tuple[str, str]]]:
        """The rows of these (app id, customid) derived at `now`, read from `cursor` and
        written by nothing: (rows to upsert, keys of rows to delete)."""
        by_app: dict[str, list[str]] = {}
        for app_id, customid in customids:
            by_app.setdefault(app_id, []).append(customid)
        rows, gone = [], []
        for app_id, wanted in sorted(by_app.items()):
            # Each read covers every customid of the app at once: a few queries per batch.
            found = facts_of_customids(cursor, app_id, wanted)
            claims = claims_of_buyers(cursor, app_id, {b for f in found.values() for b in f.buyers})
            revisions = _revisions(cursor, app_id, wanted) if revision is None else {}
            catalogue = catalogue_of(cursor, app_id)
            for customid in sorted(found):
                facts = found[customid]
                if not facts.buyers:  # no Stripe customer (left): "never bought", like anyone
                    gone.append((app_id, customid))
                    continue
                kept = revisions.get(customid, 0) if revision is None else revision
                rows.append(self._row(app_id, customid, facts, claims, catalogue, now, kept))
        return rows, gone

    def _row(
        self,
        app_id: str,
        customid: str,
        found: Facts,
        claims: dict[str, list[Claim]],
        catalogue: Catalogue,
        now: int,
        revision: int,
    ) -> tuple[Any, ...]:
        at = Instant(now)
        policy = self.policies.get(app_id, AppPolicy())
        derivation = derive(FactHistory.of(found.facts, found.recorded), catalogue, policy, at)
        customers = tuple(_linked(key, claims[key]) for key in found.buyers)
        subscriber = Subscriber(customid, customers, derivation)
        return (
            app_id,
            customid,
            _text(_permissions(customid, derivation.permissions, False)),
            _text(_permissions(customid, derivation.permissions, True)),
            _text(subscriber_json(subscriber)),
            at.next_change,
            revision,
            now,
        )

    def _announce(
        self,
        cursor: Cursor,
        rows: list[tuple[Any, ...]],
        gone: list[tuple[str, str]],
        causes: CauseOf | None,
        now: int,
    ) -> None:
        """Hand the new answers to the announcer (outbound webhooks), before they are written:
        it compares them with what was announced last. Someone gone has never bought anything."""
        if self.announcer is None:
            return
        answers: dict[str, dict[str, str]] = {}
        for row in rows:
            answers.setdefault(row[0], {})[row[1]] = row[2]
        for app_id, customid in gone:
            never = {
                "subscriberId": customid,
                "all": _never_bought(catalogue_text(cursor, app_id), False),
            }
            answers.setdefault(app_id, {})[customid] = _text(never)
        for app_id, found in sorted(answers.items()):
            self.announcer.announce(cursor, app_id, found, causes or due_causes({}), now)

    def announce_rebuilt(self, cursor: Cursor) -> None:
        """After a rebuild's switch, in its transaction: every answer that differs from the
        one last announced (a rule or parser fix) is announced, once, as caused by the rebuild."""
        if self.announcer is None:
            return
        for app_id in sorted(self.announcer.apps):
            cursor.execute(
                "SELECT customid, permissions FROM customer_grants "
                "WHERE app_id = ? AND permissions IS NOT NULL",
                (app_id,),
            )
            answers = dict(cursor.fetchall())
            self.announcer.announce(cursor, app_id, answers, rebuilt, int(self.clock()))

    def derive_due(self, cursor: Cursor, limit: int = DUE_CHUNK) -> int:
        """Derive up to `limit` rows whose time has come (or that are due now); how many."""
        due = self.due(cursor, limit)
        causes = None if self.announcer is None else due_causes(_due_now(cursor, due))
        self.derive(cursor, due, revision=None, causes=causes)
        return len(due)

    def due(self, cursor: Cursor, limit: int) -> list[tuple[str, str]]:
        """The (app id, customid) of up to `limit` rows whose time has come, soonest first."""
        cursor.execute(
            "SELECT app_id, customid FROM customer_grants WHERE due IS NOT NULL AND due <= ? "
            "ORDER BY due, app_id, customid LIMIT ?",
            (int(self.clock()), limit),
        )
        return [(app_id, customid) for app_id, customid in cursor.fetchall()]

    def seed(self, cursor: Cursor, position: int) -> None:
        """Make every linked customid's row due now, where it has none (a database written
        before this read model existed, or a rebuild's bulk pass), and every row of an app
        whose policy changed since its rows were derived."""
        cursor.execute(
            "INSERT INTO customer_grants (app_id, customid, due, revision, derived_at) "
            "SELECT DISTINCT app_id, customid, 0, ?, 0 FROM buyer_links "
            "WHERE customid IS NOT NULL ON CONFLICT DO NOTHING",
            (position,),
        )
        for app_id, policy in sorted(self.policies.items()):
            text = json.dumps(vars(policy), sort_keys=True)
            cursor.execute("SELECT policy FROM app_policies WHERE app_id = ?", (app_id,))
            row = cursor.fetchone()
            if row is not None and row[0] == text:
                continue
            if row is not None:
                cursor.execute("UPDATE customer_grants SET due = 0 WHERE app_id = ?", (app_id,))
            cursor.execute(
                "INSERT INTO app_policies VALUES (?, ?) ON CONFLICT (app_id) "
                "DO UPDATE SET policy = excluded.policy",
                (app_id, text),
            )


def affected_customids(cursor: Cursor, touched: Iterable[Touched]) -> set[tuple[str, str]]:
    """(app id, customid) of every answer these events may have changed: the customids they
    touched, and those whose buyers name a guest payment they wrote to."""
    out: set[tuple[str, str]] = set()
    guests: dict[str, set[str]] = {}
    for change in touched:
        out.update((change.app_id, customid) for customid in change.customids)
        key = change.buyer_key
        if key is not None and key.startswith(PAYMENT_PREFIX):
            guests.setdefault(change.app_id, set()).add(key)
    for app_id, keys in guests.items():
        out.update((app_id, customid) for customid in customids_naming(cursor, app_id, keys))
    return out


def _linked(buyer_key: str, claims: list[Claim]) -> LinkedCustomer:
    return LinkedCustomer(buyer_key, tuple(claims), tuple(conflicts(claims)))


def write(cursor: Cursor, rows: list[tuple[Any, ...]], gone: list[tuple[str, str]]) -> None:
    """Write what `GrantsProjection.derived` returned."""
    if gone:
        cursor.executemany("DELETE FROM customer_grants WHERE app_id = ? AND customid = ?", gone)
    if rows:
        cursor.executemany(UPSERT, rows)


def _due_now(cursor: Cursor, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Which of these rows are due now (0: a catalogue or policy change), not by time."""
    by_app: dict[str, list[str]] = {}
    for app_id, customid in keys:
        by_app.setdefault(app_id, []).append(customid)
    found: dict[tuple[str, str], int] = {}
    for app_id, customids in by_app.items():
        cursor.execute(
            "SELECT customid FROM customer_grants WHERE app_id = ? AND due = 0 "
            "AND customid IN (SELECT key FROM json_each(?))",
            (app_id, json_keys(customids)),
        )
        found.update(((app_id, customid), 0) for (customid,) in cursor.fetchall())
    return found


def _revisions(cursor: Cursor, app_id: str, customids: list[str]) -> dict[str, int]:
    cursor.execute(
        "SELECT customid, revision FROM customer_grants WHERE app_id = ? "
        "AND customid IN (SELECT key FROM json_each(?))",
        (app_id, json_keys(customids)),
    )
    return {customid: int(revision) for customid, revision in cursor.fetchall()}


def _permissions(customid: str, permissions: Any, explain: bool) -> dict[str, Any]:
    return {"subscriberId": customid, "all": [permission_json(p, explain) for p in permissions]}


def _text(document: Any) -> str:
    return orjson.dumps(document).decode()


# --- reading ---------------------------------------------------------------------------------


def catalogue_of(cursor: Cursor, app_id: str) -> Catalogue:
    """The app's catalogue as this read model's position has it."""
    return _catalogue(catalogue_text(cursor, app_id))


def catalogue_text(cursor: Cursor, app_id: str) -> str:
    cursor.execute("SELECT catalogue FROM app_catalogues WHERE app_id = ?", (app_id,))
    row = cursor.fetchone()
    return row[0] if row else EMPTY_CATALOGUE


@functools.lru_cache(maxsize=256)
def _catalogue(text: str) -> Catalogue:
    return Catalogue.from_json(json.loads(text))


Question = tuple[str, str, str]  # app_id, customid, kind
Answer = bytes | None | NotDerivedYet  # see `answers_of`


def answers_statement(questions: Sequence[Question]) -> tuple[str, list[str]]:
    """One statement for the rows of several questions (of any apps and kinds), and its
    parameters; `answers_of` reads its rows."""
    keys = sorted({(app_id, customid) for app_id, customid, _ in questions})
    sql = (
        f"SELECT app_id, customid, {', '.join(KINDS)} FROM customer_grants "
        f"WHERE (app_id, customid) IN (VALUES {', '.join('(?, ?)' for _ in keys)})"
    )
    return sql, [value for key in keys for value in key]


def answers_of(
    rows: Iterable[Sequence[Any]], questions: Sequence[Question], catalogues: Mapping[str, str]
) -> list[Answer]:
    """Each question's answer, as the body the API sends, from `answers_statement`'s rows:
    for someone with no Stripe customer (no row), permissions say "never bought" (from the
    app's catalogue in `catalogues`) and there is no subscriber (None); a row not derived yet
    (a first start on an older database) is NotDerivedYet."""
    found = {(row[0], row[1]): dict(zip(KINDS, row[2:], strict=True)) for row in rows if row[0]}
    answers: list[Answer] = []
    for app_id, customid, kind in questions:
        row = found.get((app_id, customid))
        if row is not None:
            answer = row[kind]
            answers.append(NotDerivedYet(customid) if answer is None else answer.encode())
        elif kind == SUBSCRIBER:
            answers.append(None)
        else:
            catalogue = catalogues.get(app_id) or EMPTY_CATALOGUE
            never = _never_bought(catalogue, kind == EXPLAINED)
            answers.append(orjson.dumps({"subscriberId": customid, "all": never}))
    return answers


def never_asked(rows: Iterable[Sequence[Any]], questions: Sequence[Question]) -> set[str]:
    """The apps whose catalogue `answers_of` needs: someone asked about has no row."""
    found = {(row[0], row[1]) for row in rows if row[0]}
    return {a for a, c, kind in questions if kind != SUBSCRIBER and (a, c) not in found}


def catalogues_statement(app_ids: Sequence[str]) -> str:
    return f"SELECT app_id, catalogue FROM app_catalogues WHERE app_id IN ({placeholders(app_ids)})"


@functools.lru_cache(maxsize=256)
def _never_bought(catalogue: str, explain: bool) -> list[dict[str, Any]]:
    permissions = derive((), _catalogue(catalogue), AppPolicy(), 0).permissions
    return [permission_json(p, explain) for p in permissions]


def revision_of(cursor: Cursor, app_id: str, customid: str) -> int | None:
    """The row's revision (None: no row): see the module's docstring."""
    cursor.execute(
        "SELECT revision FROM customer_grants WHERE app_id = ? AND customid = ?",
        (app_id, customid),
    )
    row = cursor.fetchone()
    return None if row is None else int(row[0])


def dirty_rows(cursor: Cursor, app_id: str) -> int:
    """How many of the app's rows are due now (a catalogue change not derived yet)."""
    cursor.execute("SELECT COUNT(*) FROM customer_grants WHERE app_id = ? AND due = 0", (app_id,))
    row = cursor.fetchone()
    return int(row[0]) if row else 0
