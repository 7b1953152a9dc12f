"""uvicorn's HTTP protocol, guarded against connections that hold descriptors without asking.

uvicorn bounds idle keep-alive time but not the time to receive a request's headers, nor the
number of open connections: 20,000 connections of 9 bytes each filled the process's descriptors
and every request failed. This protocol (uvicorn's own, `http=GuardedHttpToolsProtocol`):
- closes a connection whose request headers are not complete `header_timeout` seconds after it
  opened or after its last response;
- refuses (503 in Glassfy's envelope, then closed) a connection beyond `max_connections` open
  in the worker, or beyond `max_connections_per_address` from one address, so one client cannot
  take every descriptor and the others (Stripe's webhooks, a health probe) are still served;
- answers uvicorn's own "Invalid HTTP request" in Glassfy's envelope too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections import Counter
from dataclasses import dataclass, field

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from adapters.config import ServerLimits
from adapters.http.errors import GENERIC, INVALID_PARAMETER

log = logging.getLogger("entitlements.http")

# Descriptors kept for what is not a client connection: database connections, the log, the
# SQLite files, the projector's pipes.
RESERVED_DESCRIPTORS = 256


@dataclass
class ConnectionGuard:
    """Open connections of this worker, in all and by address (the event loop's thread only)."""

    header_timeout: float
    max_connections: int
    max_per_address: int
    by_address: Counter[str] = field(default_factory=Counter)
    total: int = 0

    @classmethod
    def from_limits(cls, limits: ServerLimits) -> ConnectionGuard:
        return cls(
            header_timeout=float(limits.header_timeout),
            max_connections=int(limits.max_connections) or descriptor_budget(),
            max_per_address=int(limits.max_connections_per_address),
        )

    def admit(self, address: str) -> bool:
        """Count the connection in, or False (not counted) when it is one too many."""
        if self.max_connections and self.total >= self.max_connections:
            return False
        if self.max_per_address and self.by_address[address] >= self.max_per_address:
            return False
        self.total += 1
        self.by_address[address] += 1
        return True

    def release(self, address: str) -> None:
        self.total -= 1
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]  # bounded by the open connections, not every client


def descriptor_budget() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(1, soft - RESERVED_DESCRIPTORS)


_guard: ConnectionGuard | None = None  # one per worker process: set by `install`


def install(limits: ServerLimits) -> None:
    """Set the limits of this worker's connections (`create_app`, in each worker)."""
    global _guard
    _guard = ConnectionGuard.from_limits(limits)


def envelope(status: int, code: int, description: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, with Glassfy's error body."""
    body = json.dumps({"status": status, "error": {"code": code, "description": description}})
    reason = {400: "Bad Request", 408: "Request Timeout", 503: "Service Unavailable"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n"
    )
    retry = "retry-after: 1\r\n" if status == 503 else ""
    return f"{head}{retry}\r\n{body}".encode()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    _address: str | None = None  # counted by the guard while open
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = _guard
        if guard is None:
            return
        address = self.client[0] if self.client else ""
        if not guard.admit(address):
            log.warning("connection refused: too many open", extra={"client": address})
            transport.write(envelope(503, GENERIC, "too many open connections, retry later"))
            transport.close()
            return
        self._address = address
        self._await_headers(guard.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self._address is not None and _guard is not None:
            _guard.release(self._address)
            self._address = None
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Kept open for another request: its headers get the same time as the first's.
        if _guard is not None and not self.transport.is_closing() and not self.pipeline:
            self._await_headers(_guard.header_timeout)

    def send_400_response(self, msg: str) -> None:
        self.transport.write(envelope(400, INVALID_PARAMETER, msg))
        self.transport.close()

    def _await_headers(self, seconds: float) -> None:
        self._cancel_header_timer()
        if seconds > 0:
            self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.write(envelope(408, GENERIC, "request headers not received in time"))
            self.transport.close()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
