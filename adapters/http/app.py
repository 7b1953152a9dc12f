"""The Starlette application: an explicit list of routes, built from an engine."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.console.routes import console_mount
from adapters.http.commands import (
    connect_stripe,
    get_catalogue,
    preview_catalogue,
    put_catalogue,
)
from adapters.http.deliveries import list_deliveries, redeliver, test_endpoints
from adapters.http.errors import GENERIC, ApiError, StorageUnavailable, error_response
from adapters.http.fast_path import PermissionsFastPath
from adapters.http.history import get_history
from adapters.http.limits import Limiters, RateLimited, protections, rate_limited_response
from adapters.http.openapi import openapi_document
from adapters.http.operations import healthz, metrics
from adapters.http.queries import get_permissions, get_subscriber
from adapters.http.recent import RecentRejections
from adapters.http.request_metrics import RequestMetrics
from adapters.http.shedding import LoadShedding
from adapters.http.sync import get_sync
from adapters.http.webhooks import receive_stripe_webhook
from adapters.storage.storage_errors import is_storage_error

log = logging.getLogger("entitlements.http")


def routes() -> list[Route]:
    return [
        Route("/v1/stripe/webhooks/{app_id}", receive_stripe_webhook, methods=["POST"]),
        Route("/v1/connect_stripe", connect_stripe, methods=["POST"]),
        Route("/v1/permissions", get_permissions, methods=["GET"]),
        Route("/v1/subscriber", get_subscriber, methods=["GET"]),
        Route("/v1/customers/{customid}/history", get_history, methods=["GET"]),
        Route("/v1/catalogue", get_catalogue, methods=["GET"]),
        Route("/v1/catalogue", put_catalogue, methods=["PUT"]),
        Route("/v1/catalogue/preview", preview_catalogue, methods=["POST"]),
        Route("/v1/sync", get_sync, methods=["GET"]),
        Route("/v1/deliveries", list_deliveries, methods=["GET"]),
        Route("/v1/deliveries/{id}/redeliver", redeliver, methods=["POST"]),
        Route("/v1/endpoints/test", test_endpoints, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi_document, methods=["GET"]),
    ]


def static_paths() -> frozenset[str]:
    return frozenset(route.path for route in routes() if "{" not in route.path)


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return error_response(error.status, error.code, error.description, error.headers)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    return error_response(error.status_code, GENERIC, str(error.detail))


async def _unexpected(request: Request, error: Exception) -> Response:
    if is_storage_error(error):  # down, locked or full: it may serve again shortly
        log.error("storage unavailable: %s", error, extra={"path": request.url.path})
        unavailable = StorageUnavailable()
        return error_response(503, unavailable.code, unavailable.description, unavailable.headers)
    log.exception("unhandled error")
    return error_response(500, GENERIC, "internal error")


def build_http_app(engine) -> Starlette:
    limiters = Limiters.from_settings(engine.settings.limits)
    fast_path = Middleware(PermissionsFastPath, engine=engine, limiters=limiters)
    rejections = RecentRejections()
    app = Starlette(
        # The console is HTML for people, apart from the API (not in its OpenAPI document).
        routes=[*routes(), console_mount(engine, rejections)],
        exception_handlers={
            ApiError: _api_error,
            RateLimited: rate_limited_response,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
        middleware=[
            Middleware(RequestMetrics, static_paths=static_paths()),  # counts the fast path's
            fast_path,  # then: a question about now skips everything below
            Middleware(LoadShedding, limit=engine.settings.limits.max_requests_in_progress),
            *protections(engine.settings.limits, engine.settings.max_body_bytes),
        ],
    )
    # No 307 to the path without its trailing slash: its Location would be built from the
    # Host header (anyone's), and Stripe does not follow redirects anyway. Such a path is 404.
    app.router.redirect_slashes = False
    app.state.engine = engine
    app.state.limits = limiters
    app.state.rejections = rejections  # webhooks refused lately, for the console's app page
    return app
