"""Load shedding: past a bound of requests in progress, a question is refused at once.

Questions other than "now" (`at`, `known_at`, history pages, commands) run in Starlette's thread
pool. When they arrive faster than they are answered they would queue, each waiting longer than
the one before, until every answer is seconds late. Past `limit` requests in progress in this
process, a new one is answered 503 with `Retry-After` instead, at once. Webhooks are not shed
here (their group commit answers 503 itself when storage cannot keep up), nor `/healthz`.
Questions about now on PostgreSQL are bounded where they wait (`adapters/storage/grouped_reads.py`).
"""

from __future__ import annotations

from adapters.http.errors import GENERIC, error_response
from adapters.http.limits import ASGIApp, Receive, Scope, Send

RETRY_AFTER = {"Retry-After": "1"}
NEVER_SHED = ("/v1/stripe/webhooks/", "/healthz", "/metrics")


class LoadShedding:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit  # 0: no bound
        self.in_progress = 0  # one event loop per process: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limit <= 0 or scope["path"].startswith(NEVER_SHED):
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.limit:
            response = error_response(503, GENERIC, "overloaded; retry shortly", RETRY_AFTER)
            await response(scope, receive, send)
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1
