"""REST requests for Prometheus: how many by route, method and status, and how long they took.

Outermost, so that the answers the fast path gives ahead of routing are counted too. Routes are
labelled by their template (`/v1/customers/{customid}/history`), never by the path asked, so the
number of series stays bounded whatever is requested; 401, 403 and 429 are statuses like any.
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram

from adapters.http.limits import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "(unmatched)"  # not a route's template: no app id or path can be spelled so

REQUESTS = Counter(
    "entitlements_http_requests",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "entitlements_http_request_seconds",
    "Time from a request's start to its answer's start, by route template",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class RequestMetrics:
    def __init__(self, app: ASGIApp, static_paths: frozenset[str]) -> None:
        self.app = app
        self.static_paths = static_paths  # routes without parameters: their path is their name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when nothing was sent

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                REQUEST_SECONDS.labels(self._route(scope)).observe(
                    time.perf_counter() - started
                )
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            REQUESTS.labels(self._route(scope), scope["method"], str(status)).inc()

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")  # set by Starlette's router when a route matched
        if route is not None:
            return getattr(route, "path", UNMATCHED)
        path = scope["path"]
        return path if path in self.static_paths else UNMATCHED
