"""GET /v1/permissions answered from the answer cache, ahead of the application's routing.

The question apps ask most ("what may user X do now?") usually has an answer that cannot have
changed since it was last given: nothing it read was written since, and the clock has not
reached its next change (projections/answers.py). This ASGI layer, outermost, serves such
an answer without Starlette's routing, middleware and thread pool: the key is checked and the
app's rate limit spent exactly as on the full path. Anything else (another route, `at` or
`known_at`, a bad or missing key, no cached answer, a rate limit reached) goes on to the
application unchanged, which answers it, errors included, and fills the cache.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from adapters.http.auth import app_for_authorization
from adapters.http.limits import ASGIApp, RateLimited, Receive, Scope, Send
from adapters.http.params import flag
from adapters.http.queries import answer_key

log = logging.getLogger("entitlements.http")

PATH = "/v1/permissions"
CACHEABLE_PARAMS = {"customid", "explain"}
JSON_HEADERS = [(b"content-type", b"application/json")]
# A cached answer is served only while the follower saw the read model this recently; its
# background loop polls more often than this (`Follower.run_forever`).
MAX_STALENESS = 1.0


class PermissionsFastPath:
    def __init__(self, app: ASGIApp, engine, limiters) -> None:
        self.app = app
        self.engine = engine
        self.limiters = limiters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "GET":
            try:
                body = self._cached(scope)
            except Exception:  # never worse than the full path: it answers instead
                log.exception("permission fast path failed")
                body = None
            if body is not None:
                headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _cached(self, scope: Scope) -> bytes | None:
        values = cacheable_params(scope["query_string"])
        if values is None:
            return None
        customid = values.get("customid")
        if not customid:
            return None
        app = app_for_authorization(_header(scope, b"authorization"), self._apps())
        if app is None:
            return None
        engine = self.engine
        stamp = engine.follower.settled(MAX_STALENESS)
        key = answer_key(app.app_id, customid, flag(values.get("explain")))
        body = engine.answers.get(key, stamp, int(engine.entitlements.clock()))
        if body is None:
            return None
        try:
            self.limiters.rest.check(app.app_id)
        except RateLimited:
            return None  # the full path answers 429 with its Retry-After
        return body

    def _apps(self):
        return self.engine.settings.apps.values()


def cacheable_params(query: bytes) -> dict[str, str] | None:
    """The query's parameters when each is cacheable and given once; else None. Decoded as
    `parse_qsl` does (the full path's parser), which runs only when a value is encoded."""
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
    if len(values) != len(params) or not values.keys() <= CACHEABLE_PARAMS:
        return None
    return values


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""
