"""GET /v1/permissions and GET /v1/subscriber: what an app user may do, and why."""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from adapters.http.auth import authenticated_app
from adapters.http.errors import SUBSCRIBER_NOT_FOUND, ApiError
from adapters.http.params import flag, instant, required_text
from adapters.http.render import permissions_json, subscriber_json
from projections.answers import Answer


async def get_permissions(request: Request) -> JSONResponse:
    app = authenticated_app(request)
    params = request.query_params
    customid = required_text(params.get("customid"), "customid")
    explain = flag(params.get("explain"))
    at = instant(params.get("at"), "at")
    known_at = instant(params.get("known_at"), "known_at")
    engine = request.app.state.engine
    if at is None and known_at is None:
        return await _permissions_now(engine, app.app_id, customid, explain)
    when = int(time.time() if at is None else at)
    permissions = await run_in_threadpool(
        engine.entitlements.permissions, app.app_id, customid, when, known_at
    )
    return JSONResponse(permissions_json(customid, permissions, explain))


async def _permissions_now(engine, app_id: str, customid: str, explain: bool) -> Response:
    body = await run_in_threadpool(_answer_now, engine, app_id, customid, explain)
    return Response(body, media_type="application/json")


def _answer_now(engine, app_id: str, customid: str, explain: bool) -> bytes:
    """Derived now, and kept for the fast path (adapters/http/fast_path.py), which serves it
    while nothing written since can have changed it."""
    now = engine.entitlements.permissions_now(app_id, customid)
    body = JSONResponse(permissions_json(customid, now.permissions, explain)).body
    answer = Answer(body, now.stamp, now.at, now.valid_until, app_id, customid, now.depends_on)
    engine.answers.put(answer_key(app_id, customid, explain), answer)
    return body


def answer_key(app_id: str, customid: str, explain: bool) -> tuple[str, str, bool]:
    return (app_id, customid, explain)


async def get_subscriber(request: Request) -> JSONResponse:
    app = authenticated_app(request)
    customid = required_text(request.query_params.get("customid"), "customid")
    entitlements = request.app.state.engine.entitlements
    subscriber = await run_in_threadpool(
        entitlements.subscriber, app.app_id, customid, int(time.time())
    )
    if subscriber is None:
        raise ApiError(404, SUBSCRIBER_NOT_FOUND, f"subscriber {customid!r} not found")
    return JSONResponse(subscriber_json(subscriber))
