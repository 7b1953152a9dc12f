"""The Starlette application: an explicit list of routes, built from an engine."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.http.commands import connect_stripe, get_catalogue, put_catalogue
from adapters.http.errors import GENERIC, ApiError, error_response
from adapters.http.queries import get_permissions, get_subscriber
from adapters.http.webhooks import receive_stripe_webhook

log = logging.getLogger("entitlements.http")


async def healthz(request: Request) -> JSONResponse:
    engine = request.app.state.engine
    try:
        engine.log.recorder.max_notification_id()
    except Exception:
        log.exception("database unreachable")
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
    return JSONResponse({"status": "ok", "database": "ok"})


def routes() -> list[Route]:
    return [
        Route("/v1/stripe/webhooks/{app_id}", receive_stripe_webhook, methods=["POST"]),
        Route("/v1/connect_stripe", connect_stripe, methods=["POST"]),
        Route("/v1/permissions", get_permissions, methods=["GET"]),
        Route("/v1/subscriber", get_subscriber, methods=["GET"]),
        Route("/v1/catalogue", get_catalogue, methods=["GET"]),
        Route("/v1/catalogue", put_catalogue, methods=["PUT"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return error_response(error.status, error.code, error.description)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return error_response(error.status_code, GENERIC, str(error.detail))


async def _unexpected(request: Request, error: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(500, GENERIC, "internal error")


def build_http_app(engine) -> Starlette:
    app = Starlette(
        routes=routes(),
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.engine = engine
    return app
