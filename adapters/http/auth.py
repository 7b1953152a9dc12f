"""REST API keys: `Authorization: Bearer <key>` names the app (it never reads another app) and
the key's role, which must allow the route (`adapters/http/route_roles.py`)."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.requests import Request

from adapters.config import AppConfig, api_key_digest
from adapters.http.errors import INVALID_API_KEY, ApiError
from adapters.http.limits import limit_rest_call
from adapters.http.route_roles import role_needed
from adapters.roles import allows


def key_for_authorization(header: str, apps: Iterable[AppConfig]) -> tuple[AppConfig, str] | None:
    """The one app whose REST key the `Authorization` header carries, and the key's role."""
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    # Check every app (no early exit) so that timing says nothing about which app matched.
    digest = api_key_digest(key)
    found = [(app, app.role_of_key_digest(digest)) for app in apps]
    matches = [(app, role) for app, role in found if role is not None]
    return matches[0] if len(matches) == 1 else None


def app_for_authorization(header: str, apps: Iterable[AppConfig]) -> AppConfig | None:
    """The one app whose REST key the `Authorization` header carries, else None."""
    found = key_for_authorization(header, apps)
    return found[0] if found else None


def authenticated_app(request: Request) -> AppConfig:
    """The app of the request's key, once the key's role allows the route (403 otherwise,
    before anything is read or written)."""
    apps = request.app.state.engine.settings.apps.values()
    found = key_for_authorization(request.headers.get("authorization", ""), apps)
    if found is None:
        raise ApiError(401, INVALID_API_KEY, "Invalid APIKEY")
    app, role = found
    needed = role_needed(request.method, route_path(request))
    if not allows(role, needed):
        raise ApiError(403, INVALID_API_KEY, f"this API key's role ({role}) may not do this")
    limit_rest_call(request, app.app_id)  # 429 once the app has spent its budget
    return app


def route_path(request: Request) -> str:
    """The matched route's path template ("/v1/customers/{customid}/history")."""
    route = request.scope.get("route")
    return getattr(route, "path", request.url.path)
