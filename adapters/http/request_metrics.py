"""REST requests for Prometheus: how many by route, method and status, and how long they took.

Outermost, so that the answers the fast path gives ahead of routing are counted too. Routes are
labelled by their template (`/v1/customers/{customid}/history`), never by the path asked, so the
number of series stays bounded whatever is requested; 401, 403 and 429 are statuses like any.

Every request passes here, so counting must cost next to nothing: the tallies are plain dicts
and lists on the event loop's thread, turned into metric families only when /metrics is read.
prometheus_client's labelled metrics took a lock and built a label tuple twice per request, a
sixth of the fast path's time (W3).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from adapters.http.limits import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "(unmatched)"  # not a route's template: no app id or path can be spelled so
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class RequestTally:
    """Requests by (route, method, status) and their latency by route, exposed as
    `entitlements_http_requests_total` and `entitlements_http_request_seconds`."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[float]] = {}  # route -> per-bucket counts (+Inf last), sum

    def count(self, route: str, method: str, status: int) -> None:
        key = (route, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def observe(self, route: str, seconds: float) -> None:
        row = self.latency.get(route)
        if row is None:
            row = self.latency[route] = [0.0] * (len(BUCKETS) + 2)
        row[bisect_left(BUCKETS, seconds)] += 1  # `le` is inclusive, as Prometheus counts
        row[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "entitlements_http_requests",
            "HTTP requests answered, by route template, method and status",
            labels=["route", "method", "status"],
        )
        for (route, method, status), n in list(self.requests.items()):
            requests.add_metric([route, method, str(status)], n)
        seconds = HistogramMetricFamily(
            "entitlements_http_request_seconds",
            "Time from a request's start to its answer's start, by route template",
            labels=["route"],
        )
        for route, row in list(self.latency.items()):
            cumulative, buckets = 0.0, []
            for bound, n in zip([*map(floatToGoString, BUCKETS), "+Inf"], row[:-1], strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            seconds.add_metric([route], buckets, row[-1])
        yield requests
        yield seconds


TALLY = RequestTally()
REGISTRY.register(TALLY)


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
                TALLY.observe(self._route(scope), time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            TALLY.count(self._route(scope), scope["method"], status)

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")  # set by Starlette's router when a route matched
        if route is not None:
            return getattr(route, "path", UNMATCHED)
        path = scope["path"]
        return path if path in self.static_paths else UNMATCHED
