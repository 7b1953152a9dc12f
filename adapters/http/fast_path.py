"""Questions about now (GET /v1/permissions, GET /v1/subscriber), answered ahead of routing.

The questions apps ask most ("what may user X do now?") are answered by one indexed read of the
grants read model (`projections/grants.py`). This ASGI layer, outermost, serves them without
Starlette's routing, middleware and thread pool: the key is checked and the app's rate limit
spent exactly as on the full path, and the read runs here (on SQLite, a few microseconds on this
thread's own read-only connection; on PostgreSQL, grouped with the other questions waiting,
`adapters/grouped_reads.py`, and refused with 503 when too many wait). Anything else (another
route, `at` or `known_at`, a bad or missing key, a key whose role does not allow the route, a
rate limit reached, a subscriber not found, an answer not derived yet, any error) goes on to the
application unchanged, which answers it, errors included.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from adapters.grouped_reads import Overloaded
from adapters.http.auth import key_for_authorization
from adapters.http.errors import GENERIC, ApiError, error_response
from adapters.http.limits import ASGIApp, RateLimited, Receive, Scope, Send
from adapters.http.params import flag, required_text
from adapters.http.route_roles import role_needed
from adapters.roles import allows
from projections.grants import EXPLAINED, PERMISSIONS, SUBSCRIBER, NotDerivedYet

log = logging.getLogger("entitlements.http")

# The routes served here, and the parameters each may take.
ROUTES = {"/v1/permissions": {"customid", "explain"}, "/v1/subscriber": {"customid"}}
FAST_PARAMS = ROUTES["/v1/permissions"]
# The role each needs, from the one table (both need `read`, which every key has, today).
ROLES_NEEDED = {path: role_needed("GET", path) for path in ROUTES}
JSON_HEADERS = [(b"content-type", b"application/json")]
OVERLOADED_HEADERS = {"Retry-After": "1"}


class PermissionsFastPath:
    def __init__(self, app: ASGIApp, engine, limiters) -> None:
        self.app = app
        self.engine = engine
        self.limiters = limiters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in ROUTES and scope["method"] == "GET":
            try:
                body = await self._answer(scope)
            except Overloaded:
                await _overloaded(send)
                return
            except Exception:  # never worse than the full path: it answers instead
                log.exception("permission fast path failed")
                body = None
            if body is not None:
                headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope) -> bytes | None:
        path = scope["path"]
        values = fast_params(scope["query_string"], ROUTES[path])
        if values is None:
            return None
        try:
            customid = required_text(values.get("customid"), "customid")
        except ApiError:
            return None  # the full path answers 400
        found = key_for_authorization(_header(scope, b"authorization"), self._apps())
        if found is None or not allows(found[1], ROLES_NEEDED[path]):
            return None  # the full path answers 401 or 403
        app = found[0]
        try:
            self.limiters.rest.check(app.app_id)
        except RateLimited:
            return None  # the full path answers 429 with its Retry-After
        if path == "/v1/subscriber":
            kind = SUBSCRIBER
        else:
            kind = EXPLAINED if flag(values.get("explain")) else PERMISSIONS
        try:
            grouped = self.engine.grouped_reads
            if grouped is None:  # a local read: a few microseconds, on this thread
                return self.engine.entitlements.now(app.app_id, customid, kind)
            return await grouped.answer((app.app_id, customid, kind))  # raises NotDerivedYet
        except NotDerivedYet:
            return None  # the full path answers 503 with its Retry-After

    def _apps(self):
        return self.engine.settings.apps.values()


async def _overloaded(send: Send) -> None:
    """503 with Retry-After: more questions are waiting than the server reads in a moment."""
    response = error_response(503, GENERIC, "overloaded; retry shortly", OVERLOADED_HEADERS)
    await send(
        {"type": "http.response.start", "status": 503, "headers": response.raw_headers}
    )
    await send({"type": "http.response.body", "body": response.body})


def fast_params(query: bytes, taken: set[str] = FAST_PARAMS) -> dict[str, str] | None:
    """The query's parameters when each is one the fast path takes and given once; else None.
    Decoded as `parse_qsl` does (the full path's parser), which runs only when a value is
    encoded."""
    text = query.decode("latin-1")
    if "%" in text or "+" in text or ";" in text:
        params = parse_qsl(text, keep_blank_values=True)
    else:  # the usual `customid=...`: nothing to decode
        params = [
            tuple(part.split("=", 1)) if "=" in part else (part, "")
            for part in text.split("&")
            if part
        ]
    values = dict(params)
    if len(values) != len(params) or not values.keys() <= taken:
        return None
    return values


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""
