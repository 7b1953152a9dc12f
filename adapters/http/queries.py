"""GET /v1/permissions and GET /v1/subscriber: what an app user may do, and why."""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from adapters.http.auth import authenticated_app
from adapters.http.errors import SUBSCRIBER_NOT_FOUND, ApiError
from adapters.http.params import flag, instant, required_text
from adapters.http.render import permissions_json, subscriber_json


async def get_permissions(request: Request) -> JSONResponse:
    app = authenticated_app(request)
    params = request.query_params
    customid = required_text(params.get("customid"), "customid")
    at = int(instant(params.get("at"), "at", default=time.time()))  # type: ignore[arg-type]
    known_at = instant(params.get("known_at"), "known_at")
    entitlements = request.app.state.engine.entitlements
    permissions = await run_in_threadpool(
        entitlements.permissions, app.app_id, customid, at, known_at
    )
    return JSONResponse(permissions_json(customid, permissions, flag(params.get("explain"))))


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
