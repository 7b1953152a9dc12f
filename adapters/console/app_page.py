"""The console's app page: webhooks recorded per minute, how far the read models lag, webhooks
refused lately, and the panels other parts of the engine add (reconcile differences, failed
deliveries), each shown only when it has something to show."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adapters.http.recent import RecentRejections, Rejection
from adapters.usecases.sync_runs import SyncRuns
from domain.aggregates import WebhookReceipt

MINUTES = 60  # the chart's span
TAIL = 5000  # log entries read back for it: a busier hour shows only its latest minutes


@dataclass(frozen=True)
class Panel:
    """A titled table another feature contributes to the app page."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""


def reconcile_panel(engine: Any, app_id: str) -> Panel | None:
    """The differences from Stripe the app's last reconcile found
    (`adapters/usecases/sync_runs.py`): what support checks first when access seems to have
    drifted from Stripe."""
    run = SyncRuns(engine.log).latest(app_id).get("reconcile")
    if run is None:
        return None
    rows = [
        [
            d["customid"],
            d["permissionId"],
            d["engine"]["entitlement"],
            d["stripe"]["entitlement"],
            d["stripe"]["state"],
            ", ".join(d["objectIds"]),
        ]
        for d in run.differences
    ]
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(run.finished_at))
    note = f"Found by the reconcile of {when}" + (f"; it failed: {run.error}" if run.error else "")
    columns = ["customid", "permission", "engine's code", "Stripe's code", "Stripe says", "objects"]
    return Panel("Differences from Stripe (last reconcile)", columns, rows, note)


def deliveries_panel(engine: Any, app_id: str, limit: int = 50) -> Panel | None:
    """Outbound webhooks the app's endpoints have not taken: failing (still retried) and dead
    (no longer retried; `entitlements deliveries redeliver ID` sends one again)."""
    if engine.deliveries is None:
        return None
    found = [d for s in ("dead", "failed") for d in engine.deliveries.listing(app_id, s, limit)]
    rows = [
        [d["id"], f"{d['customid']} #{d['sequence']}", d["status"], d["attempts"],
         d["lastError"] or "", d["url"]]
        for d in found
    ]  # fmt: skip
    columns = ["delivery", "customid #sequence", "status", "attempts", "last error", "endpoint"]
    return Panel("Failed deliveries (outbound webhooks)", columns, rows)


# Functions (engine, app_id) -> Panel | None, in the order shown: one line each.
PANELS: list[Callable[[Any, str], Panel | None]] = [reconcile_panel, deliveries_panel]


@dataclass(frozen=True)
class AppPage:
    app_id: str
    per_minute: list[int]  # oldest minute first, the current one last
    minutes_covered: int  # fewer than MINUTES when the log tail held less than the hour
    lag: int | None  # events the read models are behind; None when unknown
    rejections: list[Rejection]
    panels: list[Panel] = field(default_factory=list)


def app_page(engine, app_id: str, rejections: RecentRejections) -> AppPage:
    per_minute, covered = webhooks_per_minute(engine, app_id, time.time())
    panels = [panel for make in PANELS if (panel := make(engine, app_id)) is not None]
    return AppPage(
        app_id=app_id,
        per_minute=per_minute,
        minutes_covered=covered,
        lag=engine.follower.lag(),
        rejections=rejections.of_app(app_id),
        panels=[p for p in panels if p.rows],
    )


def webhooks_per_minute(engine, app_id: str, now: float) -> tuple[list[int], int]:
    """Stripe events recorded for the app in each of the last `MINUTES` minutes, counted from
    their receipts at the log's end (indexed by position: no scan of the whole log)."""
    recorder = engine.log.recorder
    last = recorder.max_notification_id() or 0
    tail = recorder.select_notifications(
        start=max(1, last - TAIL + 1), limit=TAIL, topics=[WebhookReceipt.Created.TOPIC]
    )
    counts = [0] * MINUTES
    oldest_seen = now
    full = last <= TAIL  # the whole log was read
    for notification in tail:
        receipt = engine.log.mapper.to_domain_event(notification)
        stamp = receipt.timestamp.timestamp()
        oldest_seen = min(oldest_seen, stamp)
        minute = int((now - stamp) // 60)
        if receipt.app_id == app_id and 0 <= minute < MINUTES:
            counts[MINUTES - 1 - minute] += 1
    covered = MINUTES if full else min(MINUTES, int((now - oldest_seen) // 60) + 1)
    return counts, covered
