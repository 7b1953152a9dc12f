"""REST API keys: `Authorization: Bearer <key>` names the app; it never reads another app."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import Request

from adapters.config import AppConfig, api_key_digest
from adapters.http.errors import INVALID_API_KEY, ApiError
from adapters.http.limits import limit_rest_call


def app_for_authorization(header: str, apps: Iterable[AppConfig]) -> AppConfig | None:
    """The one app whose REST key the `Authorization` header carries, else None."""
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    # Check every app (no early exit) so that timing says nothing about which app matched.
    digest = api_key_digest(key)
    matches = [app for app in apps if app.accepts_key_digest(digest)]
    return matches[0] if len(matches) == 1 else None


def authenticated_app(request: Request) -> AppConfig:
    apps = request.app.state.engine.settings.apps.values()
    app = app_for_authorization(request.headers.get("authorization", ""), apps)
    if app is None:
        raise ApiError(401, INVALID_API_KEY, "Invalid APIKEY")
    limit_rest_call(request, app.app_id)  # 429 once the app has spent its budget
    return app
