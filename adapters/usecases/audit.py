"""Tamper-evident exports of a customer's or an app's history, and their verification.

An export is JSON Lines: one domain event per line, then one final line. Every line carries
`prev`, the hash of the line before it (64 zeros for the first), and `hash`, its own hash:

    hash = sha256(canonical(line without its "hash" field)).hexdigest()
    canonical(obj) = json.dumps(obj, sort_keys=True, separators=(",", ":"),
                                ensure_ascii=False).encode("utf-8")

Since `prev` is inside what `hash` covers, each hash commits to every line before it: changing,
removing, inserting or reordering a line breaks the chain at that line (or, if the forger also
recomputed that line's hash, at the next one). The final line `{"end": true, "count": N,
"lastHash": ...}` makes truncation show too. A chain proves integrity only against a `lastHash`
kept elsewhere (anyone can recompute a whole chain): `verify` prints it for that comparison.

Exports stream: an app-wide export reads the log in batches of notifications and keeps one batch
in memory; a customer export reads its history page by page.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any
from uuid import UUID

from adapters.storage.eventstore import EventLog
from adapters.usecases.history import CustomerHistory
from domain.aggregates import AppCatalogue, Buyer, catalogue_id
from projections.follower import Follower
from projections.history import HistoryFilter
from projections.store import placeholders

GENESIS = "0" * 64
FORMAT = "entitlements-audit/1"
BATCH = 500


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def line_hash(obj: dict[str, Any]) -> str:
    """The hash of a line: of its canonical encoding without its own `hash` field."""
    return hashlib.sha256(canonical({k: v for k, v in obj.items() if k != "hash"})).hexdigest()


@dataclass(frozen=True)
class Recorded:
    """A domain event and where it sits in the log."""

    position: int
    app_id: str
    event: Any


def event_record(item: Recorded) -> dict[str, Any]:
    """A domain event as an export line (before chaining): every field, raw bodies included."""
    event = item.event
    data = {k: _jsonable(v) for k, v in vars(event).items()}
    return {
        "position": item.position,
        "appId": item.app_id,
        "aggregateId": str(data.pop("originator_id")),
        "version": data.pop("originator_version"),
        "timestamp": data.pop("timestamp"),
        "topic": type(event).TOPIC,
        "data": data,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def write_chain(records: Iterable[dict[str, Any]], out: IO[str]) -> tuple[int, str]:
    """Write chained lines and the final line; returns (count, last hash)."""
    prev, count = GENESIS, 0
    for record in records:
        prev = _write(out, {**record, "prev": prev})
        count += 1
    _write(out, {"end": True, "format": FORMAT, "count": count, "lastHash": prev, "prev": prev})
    return count, prev


def _write(out: IO[str], obj: dict[str, Any]) -> str:
    digest = line_hash(obj)
    out.write(canonical({**obj, "hash": digest}).decode())
    out.write("\n")
    return digest


@dataclass(frozen=True)
class Verdict:
    ok: bool
    count: int  # event lines checked (all of them when ok)
    last_hash: str
    broken_line: int | None = None  # 1-based
    reason: str = ""


def verify_lines(lines: Iterable[str]) -> Verdict:
    """Check a chain line by line (constant memory); the first broken line and why."""
    prev, count, ended = GENESIS, 0, False
    for number, text in enumerate(lines, start=1):
        problem = _check(text, prev, count, ended)
        if problem:
            return Verdict(False, count, prev, number, problem)
        obj = json.loads(text)
        ended = bool(obj.get("end"))
        if not ended:  # the final line's hash seals the chain; `lastHash` names the last event
            prev, count = obj["hash"], count + 1
    if not ended:
        return Verdict(False, count, prev, count + 1, "the final line is missing (truncated?)")
    return Verdict(True, count, prev)


def _check(text: str, prev: str, count: int, ended: bool) -> str:
    """Why this line breaks the chain ("" when it does not)."""
    if ended:
        return "a line follows the final line"
    try:
        obj = json.loads(text)
    except ValueError:
        return "not JSON"
    if not isinstance(obj, dict) or not isinstance(obj.get("hash"), str):
        return "not a chained line"
    if obj.get("prev") != prev:
        return "prev does not match the previous line's hash (a line removed, added or moved)"
    if line_hash(obj) != obj["hash"]:
        return "hash does not match the line's content (the line was changed)"
    if obj.get("end") and (obj.get("count") != count or obj.get("lastHash") != prev):
        return f"the final line says {obj.get('count')} events, the chain has {count}"
    return ""


def verify_file(path: str) -> Verdict:
    with open(path, encoding="utf-8", newline="\n") as lines:
        return verify_lines(line.rstrip("\n") for line in lines)


# --- Sources of events -----------------------------------------------------------------------


def customer_records(history: CustomerHistory, app_id: str, customid: str) -> Iterator[Recorded]:
    """A customer's history, oldest first (what `GET /v1/customers/{id}/history` shows)."""
    for entry in history.entries(app_id, customid, HistoryFilter(limit=1000)):
        yield Recorded(entry.position, app_id, entry.event)


def app_records(
    log: EventLog,
    links: Follower,
    app_id: str,
    on_batch: Callable[[int], None] = lambda _: None,
) -> Iterator[Recorded]:
    """Every buyer and catalogue event of one app, in log order, up to the log's end when the
    export started. Webhook receipts are left out: each repeats its Stripe event's id."""
    stop = log.recorder.max_notification_id() or 0
    links.catch_up(until=stop)  # every buyer registered up to `stop` is in buyer_links
    start = 0
    while start < stop:
        batch = log.recorder.select_notifications(
            start=start, limit=BATCH, stop=stop, inclusive_of_start=False
        )
        if not batch:
            return
        mine = _members(links, app_id, batch)
        for notification in batch:
            if notification.originator_id in mine:
                event = log.mapper.to_domain_event(notification)
                yield Recorded(notification.id, app_id, event)
        start = batch[-1].id
        on_batch(len(batch))


def _members(links: Follower, app_id: str, batch: Any) -> set[UUID]:
    """Which aggregates of this batch belong to the app: its buyers and its catalogue."""
    ids = sorted({str(n.originator_id) for n in batch if _is_exported(n.topic)})
    if not ids:
        return set()
    marks = placeholders(ids)
    with links.reading() as cursor:
        cursor.execute(
            f"SELECT buyer_uuid FROM buyer_links WHERE app_id = ? AND buyer_uuid IN ({marks})",
            (app_id, *ids),
        )
        members = {UUID(row[0]) for row in cursor.fetchall()}
    return members | {catalogue_id(app_id)}


_EXPORTED_PREFIXES = (Buyer.TOPIC + ".", AppCatalogue.TOPIC + ".")


def _is_exported(topic: str) -> bool:
    return topic.startswith(_EXPORTED_PREFIXES)
