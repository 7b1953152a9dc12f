"""POST /v1/stripe/webhooks/{app_id}: verify, record durably, then answer 2xx."""

from __future__ import annotations

import json
import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse

from adapters.group_commit import NotRecorded
from adapters.http.body import read_limited
from adapters.http.errors import (
    GENERIC,
    ApiError,
    StorageUnavailable,
    bad_request,
    error_response,
)
from adapters.http.limits import RateLimited, limit_webhook
from adapters.http.operations import UNKNOWN_APP_WEBHOOKS, WEBHOOK_SECONDS, WEBHOOKS
from adapters.ingest import Outcome, Webhook
from adapters.stripe.envelope import NotAStripeEvent, StripeEnvelope, parse_event
from adapters.stripe.signature import BadSignature, verify_signature

log = logging.getLogger("entitlements.webhooks")

SHOWN_ID_LENGTH = 64  # characters of an unknown app id echoed in its 404


async def receive_stripe_webhook(request: Request) -> JSONResponse:
    started = time.perf_counter()
    engine = request.app.state.engine
    app_id = request.path_params["app_id"]
    known_app = app_id in engine.settings.apps
    try:
        envelope, outcome = await _receive(request, engine, app_id)
    except ApiError as error:
        # Never label by unverified input: unknown apps and types would be unbounded labels,
        # and an unknown app is counted apart (a label "unknown" could be a real app's name).
        if known_app:
            WEBHOOKS.labels(app_id, "unverified", f"rejected_{error.status}").inc()
            rejections = getattr(request.app.state, "rejections", None)
            if rejections is not None:  # shown on the console's app page
                rejections.add(app_id, error.status, error.description)
        else:
            UNKNOWN_APP_WEBHOOKS.inc()
        log.warning(
            "webhook rejected: %s",
            error.description,
            extra={
                "app_id": app_id if known_app else None,
                "status": error.status,
                "outcome": "rejected",
            },
        )
        if isinstance(error, RateLimited):
            raise  # its handler adds Retry-After
        # Answered here rather than raised on: an exception's traceback keeps this request's
        # frames (and its body) alive until the cycle collector runs, rarely in a server.
        return error_response(error.status, error.code, error.description, error.headers)
    WEBHOOKS.labels(app_id, envelope.type, outcome.value).inc()
    WEBHOOK_SECONDS.observe(time.perf_counter() - started)
    log.info(
        "webhook %s",
        outcome.value,
        extra={
            "app_id": app_id,
            "stripe_event_id": envelope.event_id,
            "stripe_type": envelope.type,
            "outcome": outcome.value,
        },
    )
    return JSONResponse({"received": True, "duplicate": outcome is Outcome.DUPLICATE})


async def _receive(request: Request, engine, app_id: str) -> tuple[StripeEnvelope, Outcome]:
    """Verify, parse and record; raises ApiError for anything refused."""
    app = engine.settings.apps.get(app_id)
    if app is None:
        raise ApiError(404, GENERIC, f"unknown app {shortened(app_id)!r}")
    body = await read_limited(request, engine.settings.max_body_bytes)
    raw = _text(body)
    try:
        verify_signature(
            raw,
            request.headers.get("stripe-signature"),
            app.webhook_secrets,
            engine.settings.signature_tolerance,
        )
    except BadSignature as error:
        raise bad_request(f"invalid Stripe signature: {error}") from error
    limit_webhook(request, app_id)  # only verified events count (no limit by default)
    try:
        envelope, _ = parse_event(raw)
    except json.JSONDecodeError as error:
        raise bad_request(f"malformed JSON: {error.msg} at position {error.pos}") from error
    except NotAStripeEvent as error:
        raise bad_request(f"not a Stripe event: {error}") from error
    return envelope, await _record(engine, Webhook(app_id, envelope, raw))


async def _record(engine, webhook: Webhook) -> Outcome:
    extra = {"app_id": webhook.app_id, "stripe_event_id": webhook.envelope.event_id}
    try:
        return await engine.writer.record(webhook, engine.settings.limits.webhook_write_timeout)
    except NotRecorded as error:  # the database is slow or away: no traceback per webhook
        log.warning("webhook not recorded: %s", error, extra=extra)
        raise StorageUnavailable("event not stored, retry later") from error
    except Exception as error:  # storage failed: answer 5xx so that Stripe retries
        log.exception("storage failure", extra=extra)
        raise StorageUnavailable("event not stored, retry later") from error


def shortened(text: str, limit: int = SHOWN_ID_LENGTH) -> str:
    """What an error may echo of an unverified id: enough to recognise a typo, not a 10 KB
    path."""
    return text if len(text) <= limit else f"{text[:limit]}..."


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise bad_request("the body is not UTF-8") from error
