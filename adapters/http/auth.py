"""REST API keys: `Authorization: Bearer <key>` names the app; it never reads another app."""

from __future__ import annotations

from starlette.requests import Request

from adapters.config import AppConfig
from adapters.http.errors import INVALID_API_KEY, ApiError
from adapters.http.limits import limit_rest_call


def authenticated_app(request: Request) -> AppConfig:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(401, INVALID_API_KEY, "Invalid APIKEY")
    apps = request.app.state.engine.settings.apps.values()
    # Check every app (no early exit) so that timing says nothing about which app matched.
    matches = [app for app in apps if app.accepts_api_key(key.strip())]
    if len(matches) != 1:
        raise ApiError(401, INVALID_API_KEY, "Invalid APIKEY")
    limit_rest_call(request, matches[0].app_id)  # 429 once the app has spent its budget
    return matches[0]
