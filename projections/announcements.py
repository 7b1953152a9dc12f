"""Which changes of an answer are announced: the outbox the projector writes.

When the grants projection derives a customid's answer about now again, `Announcer.announce`
compares it with the last one announced for that customid; a change of some permission's code
or expireDate becomes a `permission_changes` row (its `sequence` one more than the last) in the
projector's own transaction, with the read model's rows and its tracking position. So a change
is recorded exactly once, whatever crashes: a batch that rolls back announces nothing, and a
batch applied again after a crash before its commit announces the same change once.

The rows are then appended to the event log (`adapters/outbound/publisher.py`) as
`ChangeLog.PermissionsChanged` events whose version is the sequence: appending a change again
(after a crash between the event log's commit and the row's mark) collides on the version
and is known to be done. Only then are deliveries made.

These tables are not per generation: what was announced outlives a rebuild. Only the live
generation announces (a rebuild's generation derives the same answers in the background).
Apps with no endpoint record nothing: nobody would be told.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

import orjson

from domain.aggregates import AppCatalogue, Buyer
from domain.announcements import Cause, Summary, changes, payload, summary
from projections.buyer_facts import json_keys
from projections.generations import active_generation
from projections.store import Cursor
from projections.touched import Touched

SCHEMA = [
    # The last answer announced per customid (its summary) and its sequence.
    """CREATE TABLE IF NOT EXISTS announced_answers (
        app_id TEXT NOT NULL, customid TEXT NOT NULL, sequence BIGINT NOT NULL,
        summary TEXT NOT NULL, PRIMARY KEY (app_id, customid))""",
    # Every change announced; `appended` once it is on the event log (then it is delivered).
    """CREATE TABLE IF NOT EXISTS permission_changes (
        app_id TEXT NOT NULL, customid TEXT NOT NULL, sequence BIGINT NOT NULL,
        change_id TEXT NOT NULL, created BIGINT NOT NULL, body TEXT NOT NULL,
        appended INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (app_id, customid, sequence))""",
    "CREATE INDEX IF NOT EXISTS permission_changes_unappended ON permission_changes (appended) "
    "WHERE appended = 0",
]

CauseOf = Callable[[str, str], Cause]  # (app id, customid) -> why its answer was derived


class Announcer:
    """Records the changes of the answers the live generation derives, for apps with
    endpoints."""

    def __init__(self, apps: Collection[str], projection_name: str) -> None:
        self.apps = frozenset(apps)
        self.projection_name = projection_name  # whose active generation announces

    def wants(self, app_id: str) -> bool:
        return app_id in self.apps

    def create_tables(self, cursor: Cursor) -> None:
        for statement in SCHEMA:
            cursor.execute(statement)

    def announce(
        self, cursor: Any, app_id: str, answers: dict[str, str], cause_of: CauseOf, now: int
    ) -> int:
        """Record the changes of these answers (`/v1/permissions` bodies, as text, by customid)
        since the last announced; to be called before the new answers are written. How many."""
        if not answers or not self.wants(app_id) or not self._live(cursor):
            return 0
        wanted = sorted(answers)
        known = _announced(cursor, app_id, wanted)
        baselines = _answers_before(cursor, app_id, [c for c in wanted if c not in known])
        announced, recorded = [], []
        for customid in wanted:
            new = summary(orjson.loads(answers[customid]))
            sequence, old = known.get(customid) or baselines.get(customid) or (0, {})
            if old is None:  # derived before, but never read: take it as it is now
                announced.append((app_id, customid, 0, _text(new)))
                continue
            diff = changes(old, new)
            if not diff:
                continue
            sequence += 1
            cause = cause_of(app_id, customid)
            body = payload(
                app_id, customid, sequence, now, diff, cause, orjson.loads(answers[customid])
            )
            announced.append((app_id, customid, sequence, _text(new)))
            recorded.append((app_id, customid, sequence, body["id"], now, _text(body)))
        _write(cursor, announced, recorded)
        return len(recorded)

    def _live(self, cursor: Any) -> bool:
        generation = getattr(cursor, "generation", None)
        return generation is None or generation == active_generation(cursor, self.projection_name)


def _announced(cursor: Cursor, app_id: str, customids: list[str]) -> dict[str, tuple[int, Summary]]:
    cursor.execute(
        "SELECT customid, sequence, summary FROM announced_answers WHERE app_id = ? "
        "AND customid IN (SELECT key FROM json_each(?))",
        (app_id, json_keys(customids)),
    )
    return {c: (int(s), _summary(text)) for c, s, text in cursor.fetchall()}


def _answers_before(
    cursor: Cursor, app_id: str, customids: list[str]
) -> dict[str, tuple[int, Summary | None]]:
    """Where nothing was announced yet (endpoints added since): the answer the grants row
    holds, so that the first announcement is a real change, not everyone's whole state.
    None: a row seeded but never derived. A customid with no row never had anything."""
    if not customids:
        return {}
    cursor.execute(
        "SELECT customid, permissions FROM customer_grants WHERE app_id = ? "
        "AND customid IN (SELECT key FROM json_each(?))",
        (app_id, json_keys(customids)),
    )
    return {
        c: (0, None if text is None else summary(orjson.loads(text)))
        for c, text in cursor.fetchall()
    }


def _write(
    cursor: Cursor, announced: list[tuple[Any, ...]], recorded: list[tuple[Any, ...]]
) -> None:
    if announced:
        cursor.executemany(
            "INSERT INTO announced_answers VALUES (?, ?, ?, ?) ON CONFLICT (app_id, customid) "
            "DO UPDATE SET sequence = excluded.sequence, summary = excluded.summary",
            announced,
        )
    if recorded:
        cursor.executemany(
            "INSERT INTO permission_changes (app_id, customid, sequence, change_id, created, body) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            recorded,
        )


def _summary(text: str) -> Summary:
    return {k: (v[0], v[1]) for k, v in orjson.loads(text).items()}


def _text(document: Any) -> str:
    return orjson.dumps(document).decode()


# --- causes ------------------------------------------------------------------------------------

_PRIORITY = ("stripe_event", "link", "observation")  # the most telling kind wins


def kind_of(event: Any) -> str | None:
    """What kind of cause an applied event is (None: it says nothing new about a buyer)."""
    if isinstance(event, Buyer.StripeEventRecorded):
        return "stripe_event"
    if isinstance(event, Buyer.CustomidLinked):
        return "link"
    if isinstance(event, Buyer.StripeObjectObserved | Buyer.LineItemsResolved):
        return "observation"
    if isinstance(event, Buyer.LineItemsUnresolvable):
        return "observation"
    if isinstance(event, AppCatalogue.Event):
        return "catalogue"
    return None


def batch_causes(applied: Iterable[tuple[Touched, Any]]) -> CauseOf:
    """Why each customid a batch touched was derived: the events that named it (or, for one
    reached through a guest payment, the app's events of the batch)."""
    by_customid: dict[tuple[str, str], list[Any]] = {}
    by_app: dict[str, list[Any]] = {}
    for touched, event in applied:
        by_app.setdefault(touched.app_id, []).append(event)
        for customid in touched.customids:
            by_customid.setdefault((touched.app_id, customid), []).append(event)

    def cause_of(app_id: str, customid: str) -> Cause:
        events = by_customid.get((app_id, customid)) or by_app.get(app_id, [])
        return cause_of_events(events)

    return cause_of


def cause_of_events(events: Iterable[Any]) -> Cause:
    kinds: dict[str, list[Any]] = {}
    for event in events:
        kind = kind_of(event)
        if kind is not None:
            kinds.setdefault(kind, []).append(event)
    for kind in _PRIORITY:
        if kind in kinds:
            ids = [e.stripe_event_id for e in kinds[kind]] if kind == "stripe_event" else []
            return Cause(kind, tuple(dict.fromkeys(ids)))
    return Cause("catalogue" if "catalogue" in kinds else "observation")


def due_causes(dues: dict[tuple[str, str], int]) -> CauseOf:
    """Rows derived because they were due: due now (0) is a catalogue or configuration
    change; an instant is time itself."""
    return lambda app_id, customid: Cause(
        "catalogue" if dues.get((app_id, customid)) == 0 else "time"
    )


def rebuilt(app_id: str, customid: str) -> Cause:
    """A rebuild's switch (a rule or parser fix) changed the answer."""
    return Cause("rebuild")
