"""A customer's history: every domain event of every buyer linked to an app user, oldest first.

Pages are found in the buyer-history index (`projections/history.py`) and read from the event
log itself, so that what is shown is what was recorded: the raw body is the stored text, never a
re-encoding. Reading a page costs one indexed query plus one `select_events` per run of
consecutive versions of a buyer, whatever the length of the history: aggregates are never
replayed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any
from uuid import UUID

import orjson

from adapters.storage.eventstore import EventLog
from adapters.stripe.facts import facts_from_event
from adapters.stripe.observations import facts_from_observation
from domain.aggregates import Buyer, buyer_id
from domain.announcements import ChangeLog, change_log_id
from projections.buyer_facts import buyers_of_customid
from projections.follower import ReadModelReader
from projections.history import HistoryFilter, HistoryRow, history_page

MAX_PAGE = 1000
MAX_GAP = 8  # versions read through and dropped rather than starting another query
MAX_READ = 25  # versions per read of the event store (see `_runs`)


@dataclass(frozen=True)
class HistoryEntry:
    """One domain event of a customer's history, with its place in the log."""

    position: int
    buyer_key: str
    event: Any  # a `Buyer.Event`


@dataclass(frozen=True)
class HistoryPage:
    entries: list[HistoryEntry]
    next_after: int | None  # the position to continue after; None on the last page


class CustomerHistory:
    def __init__(self, log: EventLog, reader: ReadModelReader) -> None:
        self.log = log
        self.reader = reader  # the read models: which buyers an app user has, and the index

    def buyer_keys(self, app_id: str, customid: str) -> list[str]:
        """The buyers linked to `customid` now (a transferred buyer's whole history moves)."""
        with self.reader.reading() as cursor:
            return buyers_of_customid(cursor, app_id, customid)

    def page(self, app_id: str, customid: str, where: HistoryFilter) -> HistoryPage | None:
        """None when no buyer of the app is linked to `customid`."""
        keys = self.buyer_keys(app_id, customid)
        if not keys:
            return None
        return self.page_of_buyers(app_id, keys, where, customid)

    def page_of_buyers(
        self, app_id: str, keys: Sequence[str], where: HistoryFilter, customid: str | None = None
    ) -> HistoryPage:
        """A page of these buyers' events, and of `customid`'s announced changes when given."""
        uuids = [str(buyer_id(app_id, key)) for key in keys]
        if customid is not None:
            uuids.append(str(change_log_id(app_id, customid)))
        limit = max(1, min(where.limit, MAX_PAGE))
        with self.reader.reading() as cursor:
            rows = history_page(cursor, uuids, replace(where, limit=limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        next_after = rows[-1].position if more else None
        return HistoryPage(self._read(rows), next_after)

    def entries(self, app_id: str, customid: str, where: HistoryFilter) -> Iterator[HistoryEntry]:
        """Every matching entry, page by page (constant memory)."""
        keys = self.buyer_keys(app_id, customid)
        if not keys:
            return
        while True:
            page = self.page_of_buyers(app_id, keys, where, customid)
            yield from page.entries
            if page.next_after is None:
                return
            where = replace(where, after=page.next_after)

    def _read(self, rows: list[HistoryRow]) -> list[HistoryEntry]:
        wanted = {(r.buyer_uuid, r.version) for r in rows}
        events: dict[tuple[str, int], Any] = {}
        for uuid, first, last in _runs(rows):
            stored = self.log.recorder.select_events(UUID(uuid), gt=first - 1, lte=last)
            for item in stored:
                if (uuid, item.originator_version) in wanted:  # gaps read through are dropped
                    events[(uuid, item.originator_version)] = self.log.mapper.to_domain_event(item)
        return [
            HistoryEntry(r.position, r.buyer_key, events[(r.buyer_uuid, r.version)]) for r in rows
        ]


def _runs(rows: list[HistoryRow]) -> Iterator[tuple[str, int, int]]:
    """(buyer, first version, last version) for each run of nearly consecutive versions, at
    most `MAX_READ` versions long.

    A filtered page skips versions; reading a few unwanted events in one query is cheaper than
    one query per wanted event (a round trip each on PostgreSQL), so gaps up to `MAX_GAP` are
    read through and dropped. Over TCP, one read in a hundred of a whole page of 100 events
    (~450 KB) stalled for 70-90 ms in the transport (W5, docs/audit.md); reads of 25 never did."""
    ordered = sorted((r.buyer_uuid, r.version) for r in rows)
    if not ordered:
        return
    buyer, first, last = ordered[0][0], ordered[0][1], ordered[0][1]
    for uuid, version in ordered[1:]:
        if uuid == buyer and version - last <= MAX_GAP and version - first < MAX_READ:
            last = version
            continue
        yield buyer, first, last
        buyer, first, last = uuid, version, version
    yield buyer, first, last


def entry_json(entry: HistoryEntry, include_raw: bool = False) -> dict[str, Any]:
    """An entry as the API and the CLI show it (camelCase, epoch seconds)."""
    event = entry.event
    stripe = isinstance(event, Buyer.StripeEventRecorded)
    stamp = event.timestamp.timestamp()
    out: dict[str, Any] = {
        "position": entry.position,
        "buyerKey": entry.buyer_key,
        "version": event.originator_version,
        "eventType": type(event).__name__,
        "topic": type(event).TOPIC,
        "stripeEventId": event.stripe_event_id if stripe else None,
        "stripeType": event.stripe_type if stripe else None,
        "apiVersion": event.api_version if stripe else None,
        "stripeCreated": event.stripe_created if stripe else None,
        "recordedAt": event.received_at if stripe else stamp,
        "facts": stripe_facts(event.raw) if stripe else [],
    }
    if stripe:  # how it reached us; null for events recorded before sources were kept
        out["source"] = event.source
    out.update(_details(event))
    if include_raw:
        out["raw"] = _raw(event)
    return out


def stripe_facts(raw: str) -> list[dict[str, Any]]:
    """The facts the engine reads from a raw body today (they may differ from what a former
    version of the engine read: the raw body, not the facts, is the record)."""
    try:
        event = orjson.loads(raw)
    except ValueError:
        return []
    return [fact.to_dict() for fact in facts_from_event(event)]


def _details(event: Any) -> dict[str, Any]:
    if isinstance(event, Buyer.Created):
        return {"appId": event.app_id}
    if isinstance(event, Buyer.CustomidLinked):
        return {
            "customid": event.customid,
            "previousCustomid": event.previous_customid,
            "source": event.source,
        }
    if isinstance(event, Buyer.LineItemsResolved):
        return {"checkoutSessionId": event.session_id}
    if isinstance(event, Buyer.StripeObjectObserved):
        return {"objectType": event.object_type, "objectId": event.object_id,
                "observedAt": event.observed_at, "source": event.command,
                "facts": observed_facts(event)}  # fmt: skip
    if isinstance(event, Buyer.LineItemsUnresolvable):
        return {"checkoutSessionId": event.session_id, "status": event.status,
                "reason": event.reason}  # fmt: skip
    if isinstance(event, ChangeLog.PermissionsChanged):  # what the app's endpoints were sent
        data = orjson.loads(event.body)["data"]
        return {"customid": event.customid, "changeId": event.change_id,
                "sequence": event.originator_version, "changes": data["changes"],
                "cause": data["cause"]}  # fmt: skip
    return {}


def _raw(event: Any) -> str | None:
    """The payload as received (a Stripe body, the line items as fetched from Stripe), or as
    sent (an announced change, as its `permissions.changed` body)."""
    if isinstance(event, ChangeLog.PermissionsChanged):
        return event.body
    if isinstance(event, Buyer.StripeEventRecorded):
        return event.raw
    if isinstance(event, Buyer.LineItemsResolved):
        return event.line_items
    if isinstance(event, Buyer.StripeObjectObserved):
        return event.raw
    return None


def observed_facts(event: Buyer.StripeObjectObserved) -> list[dict[str, Any]]:
    """The facts the engine reads from an observed object today."""
    try:
        obj = orjson.loads(event.raw)
    except ValueError:
        return []
    return [fact.to_dict() for fact in facts_from_observation(obj, event.observed_at)]
