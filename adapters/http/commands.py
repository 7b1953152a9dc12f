"""POST /v1/connect_stripe and GET/PUT /v1/catalogue."""

from __future__ import annotations

import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from adapters.http.auth import authenticated_app
from adapters.http.errors import GENERIC, ApiError, bad_request
from adapters.http.params import json_body, required_text
from adapters.storage.appending import WriteConflict
from adapters.usecases.linking import LinkNotSettled
from domain.catalogue import Catalogue, InvalidCatalogue


async def connect_stripe(request: Request) -> JSONResponse:
    app = authenticated_app(request)
    engine = request.app.state.engine
    body = await json_body(request, engine.settings.max_body_bytes)
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    customid = required_text(body.get("customid"), "customid")
    customer_id = required_text(body.get("customerid"), "customerid")
    if not customer_id.startswith("cus_"):
        raise bad_request("'customerid' must be a Stripe customer id (cus_...)")
    try:
        changed = await run_in_threadpool(engine.linker.link, app.app_id, customid, customer_id)
    except (LinkNotSettled, WriteConflict) as error:
        raise ApiError(503, GENERIC, f"link not recorded, retry shortly: {error}") from error
    return JSONResponse(
        {"status": 200, "customid": customid, "customerid": customer_id, "changed": changed}
    )


async def get_catalogue(request: Request) -> JSONResponse:
    app = authenticated_app(request)
    catalogues = request.app.state.engine.catalogues
    catalogue = await run_in_threadpool(catalogues.current, app.app_id)
    return JSONResponse(catalogue.to_json())


async def put_catalogue(request: Request) -> JSONResponse:
    app = authenticated_app(request)
    engine = request.app.state.engine
    catalogue = parse_catalogue(await json_body(request, engine.settings.max_body_bytes))
    position = await run_in_threadpool(engine.catalogues.replace, app.app_id, catalogue)
    if position is not None:  # seen by the app's next query, on any host
        await run_in_threadpool(engine.wait_until_derived, position, app.app_id)
    return JSONResponse({**catalogue.to_json(), "changed": position is not None})


async def preview_catalogue(request: Request) -> JSONResponse:
    """Who would gain and who would lose which permission; nothing is changed."""
    app = authenticated_app(request)
    engine = request.app.state.engine
    catalogue = parse_catalogue(await json_body(request, engine.settings.max_body_bytes))
    now = int(time.time())
    diff = await run_in_threadpool(
        engine.entitlements.preview_catalogue, app.app_id, catalogue, now
    )
    return JSONResponse({"gains": diff.gains, "losses": diff.losses, "customids": diff.customids})


def parse_catalogue(doc: object) -> Catalogue:
    try:
        return Catalogue.from_json(doc)
    except InvalidCatalogue as error:
        raise bad_request(f"invalid catalogue: {error}") from error
