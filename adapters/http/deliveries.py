"""Outbound webhooks, for the app's admin: its deliveries, a redelivery, a test of endpoints.

GET /v1/deliveries?status=pending|failed|dead|delivered&limit=N, POST
/v1/deliveries/{id}/redeliver, POST /v1/endpoints/test. An app's key sees and redelivers only
its own deliveries; only an admin key may (`adapters/http/route_roles.py`).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from adapters.http.auth import authenticated_app
from adapters.http.errors import GENERIC, ApiError, bad_request
from adapters.http.params import required_text
from adapters.outbound import sender
from adapters.outbound.store import STATUSES

DEFAULT_LIMIT, MAX_LIMIT = 100, 1000


async def list_deliveries(request: Request) -> JSONResponse:
    app = authenticated_app(request)
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        raise bad_request(f"'status' must be one of {', '.join(STATUSES)}")
    limit = _limit(request.query_params.get("limit"))
    store = request.app.state.engine.deliveries
    found = await run_in_threadpool(store.listing, app.app_id, status, limit)
    return JSONResponse({"deliveries": found})


async def redeliver(request: Request) -> JSONResponse:
    app = authenticated_app(request)
    delivery = required_text(request.path_params.get("id"), "id")
    engine = request.app.state.engine
    found = await run_in_threadpool(engine.deliveries.redeliver, app.app_id, delivery, time.time())
    if found is None:
        raise ApiError(404, GENERIC, f"no delivery {delivery[:64]!r}")
    if engine.outbound is not None:  # a worker in this process: now rather than at its poll
        engine.outbound.poke()
    return JSONResponse({"delivery": found})


async def test_endpoints(request: Request) -> JSONResponse:
    """POST a signed `endpoint.test` to each of the app's endpoints now; what each answered.
    It is not a change: it is recorded nowhere and never retried."""
    app = authenticated_app(request)
    body = orjson.dumps(
        {
            "id": f"pt_{uuid.uuid4().hex}",
            "type": "endpoint.test",
            "created": int(time.time()),
            "app": app.app_id,
            "data": {},
        }
    ).decode()
    pool = sender.connections(1)
    attempts = await asyncio.gather(
        *(run_in_threadpool(sender.post, pool, e.url, body, e.secret) for e in app.endpoints)
    )
    pool.clear()
    results = [
        {"url": e.url, "delivered": a.delivered, "status": a.status, "error": a.error}
        for e, a in zip(app.endpoints, attempts, strict=True)
    ]
    return JSONResponse({"id": orjson.loads(body)["id"], "endpoints": results})


def _limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise bad_request(f"'limit' must be an integer from 1 to {MAX_LIMIT}")
    return int(value)
