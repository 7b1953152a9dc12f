"""A recorded Stripe API: it stands in for Stripe where no real part exists to test against.

localstripe has no events API and no Checkout; Stripe itself cannot be reached from tests. This
small server answers `GET /v1/events` and the list endpoints the import reads (checkout sessions
among them) from recorded objects (the real events of `../shared/fixtures/stripe/`, and objects
a test adds), with Stripe's list semantics: newest first, `limit`, `starting_after`, `has_more`,
`created[gte]` / `created[lte]`, Bearer key checked (401 otherwise), per-path 403s naming a
missing permission, and injected failures (a 429 with `Retry-After`, a 500) mid-way.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

KEY = "rk_test_recorded"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _error(status: int, kind: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status, headers=headers)


class RecordedStripe:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.events: list[dict[str, Any]] = []
        self.objects: dict[str, list[dict[str, Any]]] = {}  # path -> objects
        self.failures: dict[int, int] = {}  # request number (from 1) -> status to answer
        self.forbidden: set[str] = set()  # paths whose permission the key lacks
        self.page_size = 100
        self.delay = 0.0  # seconds before each answer (to interrupt a run mid-way)
        self.requests: list[str] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # --- feeding it ---

    def add_event(self, raw: str) -> None:
        self.events.append(json.loads(raw))

    def add_object(self, path: str, obj: dict[str, Any]) -> None:
        self.objects.setdefault(path, []).append(obj)

    # --- answering ---

    async def _list(self, request: Request) -> Response:
        path = request.url.path
        self.requests.append(path)
        await asyncio.sleep(self.delay)
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return _error(401, "invalid_request_error", "Invalid API Key provided: rk_***")
        if path in self.forbidden:
            return _error(
                403,
                "invalid_request_error",
                "The provided key does not have the required permissions for this endpoint.",
            )
        status = self.failures.pop(len(self.requests), None)
        if status is not None:
            if status == 429:
                return _error(429, "rate_limit_error", "Too many requests", **{"Retry-After": "0"})
            return _error(status, "api_error", "Something went wrong on Stripe's end")
        items = self.events if path == "/v1/events" else self.objects.get(path, [])
        return JSONResponse(self._page(items, request))

    def _page(self, items: list[dict[str, Any]], request: Request) -> dict[str, Any]:
        query = request.query_params
        gte = int(query.get("created[gte]", -(2**62)))
        lte = int(query.get("created[lte]", 2**62))
        chosen = [o for o in items if gte <= int(o.get("created", 0)) <= lte]
        if "email" in query:  # GET /v1/customers?email=: an exact match
            chosen = [o for o in chosen if o.get("email") == query["email"]]
        chosen.sort(key=lambda o: (-int(o.get("created", 0)), o["id"]))  # newest first
        after = query.get("starting_after")
        start = next((i + 1 for i, o in enumerate(chosen) if o["id"] == after), 0)
        size = min(int(query.get("limit", 10)), self.page_size)
        page = chosen[start : start + size]
        return {"object": "list", "url": request.url.path, "data": page,
                "has_more": start + size < len(chosen)}  # fmt: skip

    # --- running it ---

    def start(self) -> None:
        paths = ["/v1/events", "/v1/checkout/sessions", "/v1/{collection}"]
        app = Starlette(routes=[Route(p, self._list) for p in paths])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the recorded Stripe API did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)


def running() -> Iterator[RecordedStripe]:
    server = RecordedStripe()
    server.start()
    try:
        yield server
    finally:
        server.stop()
