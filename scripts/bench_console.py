#!/usr/bin/env python3
"""The console's customer page for a customer with 10,000 events (W5's customer, built as
`scripts/bench_audit.py` builds it): render time p50/p99, now and at a past instant.

Through the HTTP application in process (Starlette's TestClient: routing, session, templates;
no sockets).

    .venv/bin/python scripts/bench_console.py                    # SQLite in a temporary dir
    .venv/bin/python scripts/bench_console.py --database-url postgresql://...?schema=bench_console
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "scripts"))

from bench_audit import API_KEY, CUSTOMID, HOUR, T0, build_engine, load  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from adapters.console.customer import BandCache  # noqa: E402
from adapters.console.forms import iso  # noqa: E402
from adapters.console.routes import ConsoleMount  # noqa: E402
from adapters.http.app import build_http_app  # noqa: E402


def sign_in(client: TestClient) -> None:
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/console").text).group(1)
    response = client.post("/console/sign-in", data={"csrf": token, "key": API_KEY})
    assert response.status_code == 303, response.text


def forget_bands(client: TestClient) -> None:
    """As on a customer's first view: the bands are computed, not kept from a former render."""
    (mount,) = [r for r in client.app.routes if isinstance(r, ConsoleMount)]
    mount.app.state.bands = BandCache()


def timed(client: TestClient, path: str, params: dict[str, str], cold: bool = False) -> float:
    if cold:
        forget_bands(client)
    started = time.perf_counter()
    response = client.get(path, params=params)
    elapsed = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, response.text[:500]
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = build_engine(args.database_url or f"sqlite:///{tmp}/console.sqlite")
        try:
            app = build_http_app(engine)
            with TestClient(app, follow_redirects=False) as client:
                load(engine, client, args.events)
                sign_in(client)
                page = f"/console/customers/{CUSTOMID}"
                instants = random.Random(18)
                cases = {
                    "customer page, first view (bands computed)": lambda: {},
                    "customer page, now": lambda: {},
                    "customer page, at a past instant": lambda: {
                        "at": iso(T0 + instants.randrange(args.events // 2) * HOUR)
                    },
                    "customer page, a middle timeline page": lambda: {
                        "after": str(args.events // 2)
                    },
                }
                for name, params in cases.items():
                    cold = name.startswith("customer page, first view")
                    timed(client, page, params())  # warm
                    samples = sorted(
                        timed(client, page, params(), cold) for _ in range(args.repeat)
                    )
                    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
                    print(
                        f"{name}: p50 {statistics.median(samples):.1f} ms, "
                        f"p99 {p99:.1f} ms ({args.repeat} runs, {args.events} events)"
                    )
        finally:
            engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
