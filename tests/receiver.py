"""A real HTTP receiver on 127.0.0.1 for outbound webhooks: it records what it is sent, and
can be told to answer slowly, with an error, or to be down (its port closed, then open again)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    body: str
    signature: str | None
    at: float

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    def __init__(self, port: int = 0) -> None:
        self.received: list[Received] = []  # every request that reached it, answered or not
        self.answer: Callable[[Received], int] = lambda _: 200  # status per request
        self.delay = 0.0  # seconds before answering
        self.truncated = 0  # requests whose sender stopped before the whole body came
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if len(raw) < length:  # the sender died mid-request: nothing was delivered
                    receiver.truncated += 1
                    return
                body = raw.decode()
                got = Received(body, self.headers.get("Entitlements-Signature"), time.time())
                with receiver._lock:
                    receiver.received.append(got)
                time.sleep(receiver.delay)
                status = receiver.answer(got)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Down: the port refuses connections until `start` again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.json for r in self.received]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The bodies once at least `count` requests arrived (fails after `timeout`)."""
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.received)} of {count} deliveries arrived")
            time.sleep(0.01)
        return self.bodies()
