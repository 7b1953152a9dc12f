#!/usr/bin/env python3
"""Workload W5 (../shared/spec/BENCHMARKS.md): one customer with 10,000 events; latency of a
history page, of permissions `at` a past instant, and of the same with `explain`.

Every query goes through the HTTP application in process (Starlette's TestClient: routing, auth,
JSON rendering included; no sockets). Prints p50/p99 per query and writes them as JSON.

    .venv/bin/python scripts/bench_audit.py                      # SQLite in a temporary dir
    .venv/bin/python scripts/bench_audit.py --database-url postgresql://...?schema=bench_w5
    .venv/bin/python scripts/bench_audit.py --profile permissions_at   # cProfile of one query
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from starlette.testclient import TestClient  # noqa: E402
from tqdm import tqdm  # noqa: E402

from adapters.bootstrap import Engine, bootstrap  # noqa: E402
from adapters.config import settings_from_dict  # noqa: E402
from adapters.process.runtime_tuning import tune_for_server  # noqa: E402
from adapters.stripe.envelope import parse_event  # noqa: E402
from adapters.usecases.ingest import Webhook  # noqa: E402

sys.path.insert(0, str(PROJECT / "tests"))
from lifecycles import CATALOGUE, T0, event, invoice, subscription  # noqa: E402

API_KEY = "bench-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CUSTOMER = "cus_w5"
CUSTOMID = f"user_{CUSTOMER}"
HOUR = 3600


def bodies(count: int, first: int = 0) -> list[str]:
    """A subscription renewed hourly for `count / 2` hours: an update and a paid invoice each
    (events `first` to `first + count - 1` of that life)."""
    out = []
    for n in range(first, first + count):
        start = T0 + (n // 2) * HOUR
        if n % 2:
            obj = invoice(n, CUSTOMER, f"sub_{CUSTOMER}_0", "prod_basic", start, True)
            out.append(event(f"evt_w5_{n}", "invoice.paid", start, obj))
        else:
            obj = subscription(0, CUSTOMER, "active", "prod_basic", start)
            out.append(event(f"evt_w5_{n}", "customer.subscription.updated", start, obj))
    return out


def build_engine(database_url: str) -> Engine:
    doc = {
        "database": {"url": database_url},
        "server": {"rate_limit_per_second": 0},  # latency is measured, not the per-key limit
        "apps": {"bench": {"webhook_secrets": ["whsec_bench"], "rest_api_keys": [API_KEY]}},
    }
    return bootstrap(settings_from_dict(doc, env={}))


def load(engine: Engine, client: TestClient, count: int) -> None:
    """Ingest the customer's events (skipped when the database already holds them)."""
    response = client.put("/v1/catalogue", json=CATALOGUE, headers=AUTH)
    response.raise_for_status()
    have = engine.log.last_version(_buyer_id()) or 0
    for n, raw in enumerate(tqdm(bodies(count), desc="ingest", unit="event", file=sys.stderr)):
        if n + 2 <= have:  # version 1 is the registration
            continue
        envelope, _ = parse_event(raw)
        engine.ingestor.record(Webhook("bench", envelope, raw))
    started = time.perf_counter()
    engine.project()
    print(f"projections caught up in {time.perf_counter() - started:.1f} s", file=sys.stderr)


def _buyer_id() -> Any:
    from domain.aggregates import buyer_id

    return buyer_id("bench", CUSTOMER)


def queries(engine: Engine, client: TestClient, count: int) -> dict[str, Callable[[], Any]]:
    """The W5 queries: history pages, and permissions at any instant of the customer's life:
    from its kept history, and (last row) read from the rows as after a write for it."""
    history = f"/v1/customers/{CUSTOMID}/history"
    middle = client.get(history, params={"limit": "100"}, headers=AUTH).json()["nextCursor"]
    for _ in range(count // 200 - 1):  # walk to the middle of the history
        page = client.get(history, params={"limit": "100", "cursor": middle}, headers=AUTH)
        middle = page.json()["nextCursor"]
    past = str(T0 + (count // 4) * HOUR)
    instants = random.Random(5)

    def get(path: str, **params: str) -> Callable[[], Any]:
        return lambda: client.get(path, params=params, headers=AUTH).raise_for_status()

    def at_any_instant(**params: str) -> Callable[[], Any]:
        """Each run asks about another instant of the customer's life (or just after it)."""

        def run() -> Any:
            at = str(T0 + instants.randrange(count // 2 + 24) * HOUR)
            return get("/v1/permissions", customid=CUSTOMID, at=at, **params)()

        return run

    written = itertools.count(engine.log.last_version(_buyer_id()) or 0)

    def after_a_write(run: Callable[[], Any]) -> Query:
        """The first question after a new event for this customer (its next renewal), once
        projected: the answer and the history kept for it no longer hold. Only the question
        is timed."""

        def write() -> None:
            (raw,) = bodies(1, first=next(written))
            envelope, _ = parse_event(raw)
            engine.ingestor.record(Webhook("bench", envelope, raw))
            engine.project()

        return Query(run, prepare=write)

    return {
        "history_first_page": Query(get(history, limit="100")),
        "history_middle_page": Query(get(history, limit="100", cursor=middle)),
        "history_middle_page_raw": Query(get(history, limit="100", cursor=middle, include="raw")),
        "history_filtered": Query(get(history, limit="100", type="invoice.paid", since=past)),
        "permissions_at": Query(at_any_instant()),
        "permissions_at_explain": Query(at_any_instant(explain="1")),
        "permissions_known_at": Query(at_any_instant(known_at=str(time.time()))),
        "permissions_at_after_a_write": after_a_write(at_any_instant()),
        "permissions_now_after_a_write": after_a_write(get("/v1/permissions", customid=CUSTOMID)),
    }


@dataclass(frozen=True)
class Query:
    run: Callable[[], Any]
    prepare: Callable[[], None] = lambda: None  # before each run, untimed


def measure(query: Query, repeat: int) -> dict[str, float]:
    query.prepare()
    query.run()  # warm caches
    samples = []
    for _ in range(repeat):
        query.prepare()
        started = time.perf_counter()
        query.run()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2),
        "n": repeat,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="default: SQLite in a temporary directory")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--profile", help="profile this query instead of timing all")
    parser.add_argument("--only", action="append", help="time this query only (repeatable)")
    parser.add_argument("--out", default="var/bench_audit.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/w5.sqlite"
        engine = build_engine(url)
        try:
            from adapters.http.app import build_http_app

            with TestClient(build_http_app(engine)) as client:
                load(engine, client, args.events)
                tune_for_server()  # as `entitlements serve` does at start-up
                runs = queries(engine, client, args.events)
                if args.profile:
                    return profile(runs[args.profile])
                chosen = {name: run for name, run in runs.items() if name in (args.only or runs)}
                results = {name: measure(run, args.repeat) for name, run in chosen.items()}
        finally:
            engine.close()
    report(results, url, args)
    return 0


def profile(query: Query) -> int:
    profiler = cProfile.Profile()
    for _ in range(20):
        query.prepare()
        profiler.enable()
        query.run()
        profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    return 0


def report(results: dict[str, dict[str, float]], url: str, args: argparse.Namespace) -> None:
    backend = url.split(":", 1)[0]
    print(f"W5 audit: {args.events} events, {backend}, {args.repeat} runs each")
    print(f"{'query':<28} {'p50 ms':>8} {'p99 ms':>8}")
    for name, figures in results.items():
        print(f"{name:<28} {figures['p50_ms']:>8} {figures['p99_ms']:>8}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"backend": backend, "events": args.events, "results": results}))


if __name__ == "__main__":
    sys.exit(main())
