"""For operators: /healthz (liveness and readiness) and /metrics (Prometheus)."""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from adapters.storage.eventstore import sqlite_path

log = logging.getLogger("entitlements.http")

MAX_READY_LAG = 1000  # events; beyond this the read side is too stale to call "ready"
# A health check must answer before the prober gives up; while the database is down the
# store's own retries take far longer (10 attempts), so stop waiting and say unreachable.
HEALTH_SECONDS = 3.0
MIN_FREE_BYTES = 1024 * 1024  # below this, the next commit on SQLite may not fit

WEBHOOKS = Counter(
    "entitlements_webhooks",
    "Stripe webhooks received, by app, event type and outcome",
    ["app", "type", "outcome"],
)
UNKNOWN_APP_WEBHOOKS = Counter(
    "entitlements_webhooks_unknown_app",
    "Webhooks posted to an app id that is not configured (refused with 404)",
)
WEBHOOK_SECONDS = Histogram(
    "entitlements_webhook_seconds",
    "Time to verify and durably record a webhook",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
PROJECTION_LAG = Gauge(
    "entitlements_projection_lag_events",
    "How many events the read model is behind the event log",
    ["projection"],
)
PROJECTION_POSITION = Gauge(
    "entitlements_projection_position",
    "The event log position the read model has applied up to",
    ["projection"],
)
PROJECTOR_ACTIVE = Gauge(
    "entitlements_projector_active",
    "1 while this server's projector holds the lease and applies the event log to the read "
    "models; 0 while it stands by (another server's applies)",
)
LOG_POSITION = Gauge(
    "entitlements_event_log_position", "The position of the newest event in the event log"
)
DELIVERIES = Gauge(
    "entitlements_deliveries",
    "Outbound webhook deliveries not delivered: pending (not tried yet, or being sent), failed "
    "(retried later) and dead (no longer retried; redeliver them)",
    ["app", "status"],
)
CHECKOUTS_REFUSED = Gauge(
    "entitlements_checkouts_unresolvable",
    "Checkouts whose line items Stripe refused for good (404, 401, 403): they grant nothing "
    "until `entitlements resolve-checkouts --retry-failed` resolves them",
    ["app"],
)


async def healthz(request: Request) -> JSONResponse:
    engine = request.app.state.engine
    try:
        with anyio.fail_after(HEALTH_SECONDS):
            lag = await anyio.to_thread.run_sync(engine.follower.lag, abandon_on_cancel=True)
    except Exception:  # TimeoutError included
        log.exception("database unreachable")
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
    ready = lag <= MAX_READY_LAG
    body = {
        "status": "ok" if ready else "catching_up",
        "database": "ok",
        "projections": {engine.follower.projection.name: {"lag": lag, "ready": ready}},
    }
    failure = storage_failure(engine)
    if failure is not None:  # reads may still be served; writes are not
        body.update(status="unavailable", database="failing", storage_error=failure)
        return JSONResponse(body, 503)
    return JSONResponse(body, 200 if ready else 503)


def storage_failure(engine) -> str | None:
    """Why webhooks cannot be recorded now, if they cannot: the last commit's error, or (on
    SQLite) a disk with no room left for the next one."""
    if engine.writer.last_error is not None:
        return engine.writer.last_error
    url = engine.settings.database_url
    if url.startswith("sqlite:") and sqlite_path(url) != ":memory:":
        folder = Path(sqlite_path(url)).resolve().parent
        with contextlib.suppress(OSError):
            if shutil.disk_usage(folder).free < MIN_FREE_BYTES:
                return f"disk full: less than {MIN_FREE_BYTES} bytes free in {folder}"
    return None


async def metrics(request: Request) -> Response:
    engine = request.app.state.engine
    try:
        name = engine.follower.projection.name
        position = await run_in_threadpool(engine.follower.position)
        head = await run_in_threadpool(engine.log.recorder.max_notification_id)
        PROJECTION_POSITION.labels(name).set(position)
        LOG_POSITION.set(head or 0)
        PROJECTION_LAG.labels(name).set(max(0, (head or 0) - position))
    except Exception:
        log.exception("projection lag unavailable")
    projector = getattr(request.app.state, "projector", None)  # none: not started by `serve`
    if projector is not None:
        PROJECTOR_ACTIVE.set(1 if projector.active else 0)
    try:
        refused = await run_in_threadpool(engine.resolver.refused_by_app)
        for app_id, count in refused.items():
            CHECKOUTS_REFUSED.labels(app_id).set(count)
    except Exception:
        log.exception("unresolvable checkouts unavailable")
    try:
        unfinished = await run_in_threadpool(engine.deliveries.unfinished)
        for app_id, app in engine.settings.apps.items():
            for status in ("pending", "failed", "dead") if app.endpoints else ():
                DELIVERIES.labels(app_id, status).set(unfinished.get((app_id, status), 0))
    except Exception:
        log.exception("deliveries unavailable")
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
