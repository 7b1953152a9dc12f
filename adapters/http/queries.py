"""GET /v1/permissions and GET /v1/subscriber: what an app user may do, and why.

About now, the answer is the grants read model's (`projections/grants.py`), as it stands: one
indexed read, never a derivation. About another instant (`at`, `known_at`) it is derived from
the facts as they stand. Neither waits for the projector.
"""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from adapters.http.auth import authenticated_app
from adapters.http.errors import GENERIC, SUBSCRIBER_NOT_FOUND, ApiError
from adapters.http.params import flag, instant, required_text
from projections.grants import EXPLAINED, PERMISSIONS, SUBSCRIBER, NotDerivedYet
from projections.shapes import permissions_json

RETRY_AFTER = "1"  # seconds, when an answer is being derived for the first time


async def get_permissions(request: Request) -> Response:
    app = authenticated_app(request)
    params = request.query_params
    customid = required_text(params.get("customid"), "customid")
    explain = flag(params.get("explain"))
    at = instant(params.get("at"), "at")
    known_at = instant(params.get("known_at"), "known_at")
    engine = request.app.state.engine
    if at is None and known_at is None:
        kind = EXPLAINED if explain else PERMISSIONS
        body = await run_in_threadpool(answer_now, engine, app.app_id, customid, kind)
        assert body is not None  # permissions are never missing: "never bought" at least
        return json_body(body)
    when = int(time.time() if at is None else at)
    permissions = await run_in_threadpool(
        engine.entitlements.permissions, app.app_id, customid, when, known_at
    )
    return JSONResponse(permissions_json(customid, permissions, explain))


async def get_subscriber(request: Request) -> Response:
    app = authenticated_app(request)
    customid = required_text(request.query_params.get("customid"), "customid")
    engine = request.app.state.engine
    body = await run_in_threadpool(answer_now, engine, app.app_id, customid, SUBSCRIBER)
    if body is None:
        raise ApiError(404, SUBSCRIBER_NOT_FOUND, f"subscriber {customid!r} not found")
    return json_body(body)


def answer_now(engine, app_id: str, customid: str, kind: str) -> bytes | None:
    try:
        return engine.entitlements.now(app_id, customid, kind)
    except NotDerivedYet as error:
        raise CatchingUp() from error


class CatchingUp(ApiError):
    """503 with Retry-After: the projector has not derived this answer yet (a first start on a
    database written before the grants read model existed)."""

    headers = {"Retry-After": RETRY_AFTER}

    def __init__(self) -> None:
        super().__init__(503, GENERIC, "this answer is being derived; retry shortly")


def json_body(body: bytes) -> Response:
    return Response(body, media_type="application/json")
