"""Protections of the HTTP layer: rate limits, body caps and a per-request timeout.

Rate limits are token buckets held in memory, one per app and per process: with N workers (or N
hosts) an app may make N times the configured rate. That is enough to stop a runaway client
without a shared store; a global quota belongs in a proxy in front.

- REST routes are limited per app, after its key is verified: a stranger cannot spend an app's
  budget, and the number of buckets is bounded by the number of configured apps.
- Webhooks are not limited by default (`webhook_rate_limit_per_second = 0`): a 429 makes Stripe
  retry later with backoff, which only delays entitlements. When set, the limit applies after the
  signature is verified, so unsigned floods (cheap to refuse anyway) never use it up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from adapters.config import ServerLimits
from adapters.http.errors import (
    GENERIC,
    RETRY_AFTER_SECONDS,
    TOO_MANY_REQUESTS,
    ApiError,
    error_response,
)

log = logging.getLogger("entitlements.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RateLimited(ApiError):
    """429 with Glassfy's code 1200; `retry_after` seconds until a request would pass."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(429, TOO_MANY_REQUESTS, "Too many requests")
        self.retry_after = retry_after


async def rate_limited_response(request: Request, error: Exception) -> Response:
    assert isinstance(error, RateLimited)
    response = error_response(error.status, error.code, error.description)
    response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return response


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: int  # the bucket's size: how many calls may come at once
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


@dataclass
class RateLimiter:
    """Buckets keyed by app id. Used from the event loop's thread only, so no lock."""

    rate: float  # 0 disables the limit
    burst: int
    clock: Callable[[], float] = time.monotonic
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def check(self, key: str) -> None:
        if self.rate <= 0:
            return
        now = self.clock()
        burst = max(1, self.burst)
        bucket = self.buckets.setdefault(key, TokenBucket(self.rate, burst, burst, now))
        wait = bucket.take(now)
        if wait:
            raise RateLimited(wait)


@dataclass
class Limiters:
    rest: RateLimiter
    webhooks: RateLimiter

    @classmethod
    def from_settings(cls, limits: ServerLimits) -> Limiters:
        return cls(
            rest=RateLimiter(limits.rate_limit_per_second, int(limits.rate_limit_burst)),
            webhooks=RateLimiter(
                limits.webhook_rate_limit_per_second, int(limits.webhook_rate_limit_burst)
            ),
        )


def limit_rest_call(request: Request, app_id: str) -> None:
    """Raise RateLimited when the app has spent its REST budget (after its key verified)."""
    limiters: Limiters | None = getattr(request.app.state, "limits", None)
    if limiters is not None:
        limiters.rest.check(app_id)


def limit_webhook(request: Request, app_id: str) -> None:
    """Raise RateLimited when the app's verified webhooks exceed their (optional) budget."""
    limiters: Limiters | None = getattr(request.app.state, "limits", None)
    if limiters is not None:
        limiters.webhooks.check(app_id)


# --- ASGI middleware -----------------------------------------------------------------------------


def protections(limits: ServerLimits, max_body_bytes: int) -> list[Middleware]:
    """The middleware of `build_http_app`, outermost first."""
    return [
        Middleware(TimeoutMiddleware, seconds=limits.request_timeout),
        Middleware(BodyLimitMiddleware, max_bytes=max_body_bytes),
    ]


class BodyLimitMiddleware:
    """Caps every request body, whatever route reads it: reading past `max_bytes` raises 413
    inside the handler (so its error handling and metrics still apply). Routes check the
    declared Content-Length themselves (`read_limited`); this catches any that forget to."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise ApiError(413, GENERIC, f"request body larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


class TimeoutMiddleware:
    """Answers 503 (Glassfy 1005) when a request takes longer than `seconds` (0: no limit).

    The 503 is sent at once, a late answer is dropped. Work already handed to a worker thread
    (a database call) cannot be interrupted: it finishes in the background, and a webhook it
    records is then a duplicate when Stripe retries, which changes nothing.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.seconds <= 0:
            await self.app(scope, receive, send)
            return
        # The app runs in this task; a timer (not a task and a sleeping task per request, which
        # cost as much as a permission query) starts the 503 only when the time is up.
        state = {"started": False, "timed_out": False, "running": True}
        cancel_scope = anyio.CancelScope()
        answering: list[asyncio.Task[None]] = []

        async def guarded_send(message: Message) -> None:
            if state["timed_out"]:
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        async def answer() -> None:
            try:
                if not state["started"]:
                    response = error_response(
                        503,
                        GENERIC,
                        "request timed out, retry later",
                        {"Retry-After": RETRY_AFTER_SECONDS},
                    )
                    await response(scope, receive, send)
            finally:
                if state["running"]:
                    cancel_scope.cancel()

        def time_out() -> None:
            state["timed_out"] = True
            log.warning(
                "request timed out after %s s",
                self.seconds,
                extra={"method": scope.get("method"), "path": scope.get("path")},
            )
            answering.append(asyncio.ensure_future(answer()))

        timer = asyncio.get_running_loop().call_later(self.seconds, time_out)
        try:
            with cancel_scope:
                await self.app(scope, receive, guarded_send)
        except Exception:
            if not state["timed_out"]:  # after a timeout the 503 has answered already
                raise
        finally:
            state["running"] = False
            timer.cancel()
        if answering:
            await answering[0]
