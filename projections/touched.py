"""What events another process applied touched, judged from the rows they left.

Several processes may follow one read model (the tracking row arbitrates: `projections/
follower.py`). A range of events a follower did not apply itself must still be reported to the
answer cache (`projections/answers.py`), or every answer would end with it. The events' topics
and aggregates say which buyers (and catalogues) they were about; the buyer-facts rows then say
which customids those buyers ever claimed. Nothing is decoded.

Why that covers what `BuyerFactsProjection.apply` would have reported: a buyer event changes only
that buyer's rows; claims are never removed (a claim's customid is part of its key), and a link
is always one of the buyer's claims, so every customid the buyer claimed by now includes its
links before and after each event of the range, and the customids those events claimed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from domain.aggregates import AppCatalogue, Buyer, WebhookReceipt
from projections.answers import EVERYTHING, Touched
from projections.buyer_facts import BuyerRow, touched
from projections.store import Cursor, placeholders

BUYER_TOPICS = Buyer.TOPIC + "."
CATALOGUE_TOPICS = AppCatalogue.TOPIC + "."
RECEIPT_TOPICS = WebhookReceipt.TOPIC + "."
CHUNK = 500  # keys per IN (...) list


def touched_elsewhere(cursor: Cursor, notifications: Sequence[Any]) -> list[Touched]:
    """What these stored events touched; `cursor` must see the rows they left (a tracked
    position at or beyond the last of them)."""
    found: list[Touched] = []
    buyers: set[str] = set()
    for notification in notifications:
        topic = notification.topic
        if topic.startswith(BUYER_TOPICS):
            buyers.add(str(notification.originator_id))
        elif topic.startswith(CATALOGUE_TOPICS):
            found.append(Touched(catalogue=notification.originator_id))
        elif not topic.startswith(RECEIPT_TOPICS):
            return [EVERYTHING]  # an aggregate the buyer-facts rows do not describe
    rows = _buyer_rows(cursor, sorted(buyers))
    if len(rows) != len(buyers):
        return [EVERYTHING]  # a buyer these rows do not know: judge nothing
    claimed = _claimed_customids(cursor, rows)
    for row in rows:
        found.append(touched(row, *claimed.get((row.app_id, row.buyer_key), ())))
    return found


def _buyer_rows(cursor: Cursor, uuids: list[str]) -> list[BuyerRow]:
    rows: list[BuyerRow] = []
    for start in range(0, len(uuids), CHUNK):
        chunk = uuids[start : start + CHUNK]
        cursor.execute(
            "SELECT buyer_uuid, app_id, buyer_key, customid FROM buyer_links "
            f"WHERE buyer_uuid IN ({placeholders(chunk)})",
            tuple(chunk),
        )
        rows += [BuyerRow(*row) for row in cursor.fetchall()]
    return rows


def _claimed_customids(cursor: Cursor, rows: list[BuyerRow]) -> dict[tuple[str, str], set[str]]:
    """(app id, buyer key) -> every customid the buyer claimed, from any source."""
    keys_by_app: dict[str, list[str]] = {}
    for row in rows:
        keys_by_app.setdefault(row.app_id, []).append(row.buyer_key)
    claimed: dict[tuple[str, str], set[str]] = {}
    for app_id, keys in keys_by_app.items():
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            cursor.execute(
                "SELECT buyer_key, customid FROM customid_claims "
                f"WHERE app_id = ? AND buyer_key IN ({placeholders(chunk)})",
                (app_id, *chunk),
            )
            for key, customid in cursor.fetchall():
                claimed.setdefault((app_id, key), set()).add(customid)
    return claimed
