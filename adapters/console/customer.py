"""What a customer's console page shows: linked Stripe customers, the answer at an instant with
its explanation, a band per permission over time, and one page of the timeline."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from adapters.console.bands import Bands, permission_bands
from adapters.usecases.history import entry_json
from domain.aggregates import Buyer
from domain.rules import derive
from projections.grants import EXPLAINED, NotDerivedYet
from projections.history import HistoryFilter
from projections.shapes import permissions_json

TIMELINE_PAGE = 50  # events per page: a 10,000-event customer renders one page at a time
KEPT_BANDS = 256  # customers whose bands are kept between renders


@dataclass(frozen=True)
class Instant:
    """The instant picked: `at` (Stripe's clock) and `known_at` (ours); None: now, everything."""

    at: float | None = None
    known_at: float | None = None

    @property
    def is_now(self) -> bool:
        return self.at is None and self.known_at is None


@dataclass(frozen=True)
class CustomerPage:
    customid: str
    stripe_customers: list[str]
    instant: Instant
    evaluated_at: int
    permissions: list[dict[str, Any]]  # the API's shape, with `explain`
    bands: Bands
    timeline: list[dict[str, Any]]
    after: int
    next_after: int | None


class BandCache:
    """Bands kept between renders (the instant picker, the timeline's pages), until the
    customer's facts, the catalogue or the minute change: a long history's bands cost a whole
    time budget to compute (`bands.py`)."""

    def __init__(self, size: int = KEPT_BANDS) -> None:
        self._kept: OrderedDict[tuple, Bands] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Bands | None:
        with self._lock:
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
            return found

    def put(self, key: tuple, bands: Bands) -> None:
        with self._lock:
            self._kept[key] = bands
            while len(self._kept) > self._size:
                self._kept.popitem(last=False)


def customer_page(
    engine,
    app_id: str,
    customid: str,
    instant: Instant,
    after: int = 0,
    bands: BandCache | None = None,
) -> CustomerPage | None:
    """None when no Stripe customer of the app is linked to `customid`."""
    page = engine.history.page(app_id, customid, HistoryFilter(after=after, limit=TIMELINE_PAGE))
    if page is None:
        return None
    now = int(time.time())
    evaluated_at = now if instant.at is None else int(instant.at)
    return CustomerPage(
        customid=customid,
        stripe_customers=engine.history.buyer_keys(app_id, customid),
        instant=instant,
        evaluated_at=evaluated_at,
        permissions=_answer(engine, app_id, customid, instant, evaluated_at),
        bands=_bands(engine, app_id, customid, instant, max(now, evaluated_at), bands),
        timeline=[timeline_row(entry_json(entry)) for entry in page.entries],
        after=after,
        next_after=page.next_after,
    )


def _answer(engine, app_id: str, customid: str, instant: Instant, at: int) -> list[dict[str, Any]]:
    """What `GET /v1/permissions?explain=true` answers (with `at`, `known_at` when picked)."""
    if instant.is_now:
        try:  # the projected answer, exactly what the API serves now
            return orjson.loads(engine.entitlements.now(app_id, customid, EXPLAINED))["all"]
        except NotDerivedYet:
            pass  # derived below, as the API would once caught up
    statuses = engine.entitlements.permissions(app_id, customid, at, instant.known_at)
    return permissions_json(customid, statuses, explain=True)["all"]


def _bands(
    engine, app_id: str, customid: str, instant: Instant, end: int, cache: BandCache | None
) -> Bands:
    history = engine.entitlements.history(app_id, customid).known_by(instant.known_at)
    catalogue = engine.catalogues.as_of(app_id, instant.known_at)  # None: the current one
    policy = engine.settings.apps[app_id].policy
    end = -(-end // 60) * 60  # to the next minute: what the cache keeps is good that long
    facts = history.facts
    key = (app_id, customid, instant.known_at, end, len(facts), facts[-1] if facts else None,
           orjson.dumps(catalogue.to_json()))  # fmt: skip
    kept = cache.get(key) if cache is not None else None
    if kept is not None:
        return kept

    def evaluate(t: int):
        return derive(history, catalogue, policy, t).permissions

    found = permission_bands([fact.at for fact in facts], evaluate, end, policy.renewal_leeway)
    if cache is not None:
        cache.put(key, found)
    return found


def timeline_row(entry: dict[str, Any]) -> dict[str, Any]:
    """An entry of the history as the timeline shows it."""
    return {
        **entry,
        "label": entry["stripeType"] or entry["eventType"],
        "when": entry["stripeCreated"] if entry["stripeCreated"] is not None else None,
        "source": source_of(entry),
    }


def source_of(entry: dict[str, Any]) -> str:
    """Where the engine learnt it. A Stripe event recorded before sources were kept names none:
    it came by webhook, or by a backfill of then."""
    kind = entry["eventType"]
    if entry["stripeEventId"] is not None:
        return entry.get("source") or "webhook or backfill"
    if kind == Buyer.StripeObjectObserved.__name__:
        return entry.get("source") or "import"
    if kind == Buyer.CustomidLinked.__name__:
        return entry.get("source") or "link"
    if kind in (Buyer.LineItemsResolved.__name__, Buyer.LineItemsUnresolvable.__name__):
        return "Stripe API (line items)"
    if kind == "PermissionsChanged":
        return "announced to the app"
    return "engine"
