"""Connections that hold descriptors without asking (slowloris) are bounded in time and in
number, and the server keeps answering others meanwhile: a real `entitlements serve` process
(adapters/http/connections.py)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_event, signed_headers
from tests.test_faults import Server

HEADER_TIMEOUT = 1.0
PARTIAL_REQUEST = b"GET /heal"  # 9 bytes, never finished


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'entitlements.sqlite'}"


@contextlib.contextmanager
def serving(tmp_path: Path, url: str, **server: float) -> Iterator[Server]:
    running = Server(tmp_path, url, server={"header_timeout": HEADER_TIMEOUT, **server})
    try:
        yield running
    finally:
        running.stop()


@contextlib.contextmanager
def stalled_connections(port: int, count: int, source: str) -> Iterator[list[socket.socket]]:
    """`count` connections from the loopback address `source`, each sending 9 bytes of a
    request that never ends."""
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            conn = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
            conn.sendall(PARTIAL_REQUEST)
            opened.append(conn)
        yield opened
    finally:
        for conn in opened:
            conn.close()


def final_status(conn: socket.socket, seconds: float) -> int | None:
    """The status of what the server sent before closing the connection; None if it is still
    open after `seconds`."""
    conn.settimeout(seconds)
    received = b""
    try:
        while chunk := conn.recv(4096):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    if not received:
        return 0  # closed without a word
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert json.loads(body)["status"] == status  # Glassfy's envelope
    return status


def test_stalled_connections_are_bounded_per_address_closed_in_time_and_others_served(
    tmp_path: Path, sqlite_url: str
) -> None:
    with serving(tmp_path, sqlite_url, max_connections_per_address=40) as server:
        started = time.monotonic()
        with stalled_connections(server.port, 150, source="127.0.0.2") as stalled:
            # Meanwhile, from another address: health probes and Stripe's webhooks are served.
            raw = make_event("customer.updated", {"id": "cus_conn", "object": "customer"})
            with httpx.Client(timeout=5) as http:
                assert http.get(f"{server.url}/healthz").status_code == 200
                webhook = http.post(
                    f"{server.url}/v1/stripe/webhooks/demo",
                    content=raw,
                    headers=signed_headers(raw),
                )
                assert webhook.status_code == 200
            outcomes = Counter(final_status(conn, 5) for conn in stalled)
        elapsed = time.monotonic() - started
    # 40 admitted and closed once their headers were late (408); the other 110 refused at once.
    assert outcomes == {408: 40, 503: 110}
    assert elapsed < HEADER_TIMEOUT + 4


def test_open_connections_are_bounded_in_all(tmp_path: Path, sqlite_url: str) -> None:
    with serving(tmp_path, sqlite_url, max_connections=30, max_connections_per_address=0) as srv:
        sources = [f"127.0.0.{n}" for n in range(2, 6)]
        with contextlib.ExitStack() as stack:
            stalled = [
                conn
                for source in sources
                for conn in stack.enter_context(stalled_connections(srv.port, 15, source))
            ]
            outcomes = Counter(final_status(conn, 5) for conn in stalled)
        assert outcomes == {408: 30, 503: 30}
        # Once the stalled ones are gone, everyone is served again, without a restart.
        assert srv.healthz().status_code == 200


def test_a_keep_alive_connection_gets_the_same_time_for_its_next_headers(
    tmp_path: Path, sqlite_url: str
) -> None:
    with serving(tmp_path, sqlite_url, keep_alive_timeout=60) as server:
        conn = socket.create_connection(("127.0.0.1", server.port))
        with conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 200 ")
            conn.sendall(PARTIAL_REQUEST)  # then the next request stalls
            assert final_status(conn, HEADER_TIMEOUT + 3) == 408


def test_a_request_uvicorn_cannot_parse_is_400_in_glassfys_envelope(
    tmp_path: Path, sqlite_url: str
) -> None:
    with serving(tmp_path, sqlite_url) as server:
        conn = socket.create_connection(("127.0.0.1", server.port))
        with conn:
            conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            assert final_status(conn, 5) == 400
