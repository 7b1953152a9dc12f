"""W2: the same signed events through the engine's application in process, no HTTP.

Engine loop per event: verify the signature, parse the envelope, `engine.ingestor.record(...)`
(exactly what the webhook route does, minus HTTP). Floor loop: verify, insert the raw body, one
transaction per event. Both run sequentially in this process for `seconds`, on a fresh database.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from adapters.bootstrap import bootstrap
from adapters.config import settings_from_dict
from adapters.process.runtime_tuning import tune_for_server
from adapters.stripe.envelope import parse_event
from adapters.stripe.signature import verify_signature
from adapters.usecases.ingest import Webhook
from benchlib.client import percentile
from benchlib.storage import open_store


@dataclass
class LoopResult:
    count: int
    seconds: float
    p50_ms: float
    p99_ms: float
    exhausted: bool

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {
            "count": self.count,
            "seconds": round(self.seconds, 3),
            "rate": round(self.rate, 1),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "exhausted": self.exhausted,
        }


def timed_loop(
    step: Callable[[str, str], None], signed: Sequence[tuple[str, str]], seconds: float
) -> LoopResult:
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    for header, raw in signed:
        began = time.perf_counter()
        step(header, raw)
        latencies.append((time.perf_counter() - began) * 1000)
        if began > deadline:
            break
    elapsed = time.perf_counter() - start
    return LoopResult(
        len(latencies),
        elapsed,
        percentile(latencies, 50),
        percentile(latencies, 99),
        len(latencies) == len(signed),
    )


def engine_settings(database_url: str, app_id: str, secret: str):
    doc = {
        "database": {"url": database_url},
        "apps": {app_id: {"webhook_secrets": [secret], "rest_api_keys": ["bench"]}},
    }
    return settings_from_dict(doc, {})


def run_engine(
    database_url: str,
    app_id: str,
    secret: str,
    signed: Sequence[tuple[str, str]],
    seconds: float,
    profile_to: Path | None = None,
) -> tuple[LoopResult, str | None]:
    """The engine's ingest path; with `profile_to`, under cProfile (stats saved, top returned)."""
    engine = bootstrap(engine_settings(database_url, app_id, secret))
    tune_for_server()  # as `entitlements serve` does
    secrets = [secret]

    def step(header: str, raw: str) -> None:
        verify_signature(raw, header, secrets)
        envelope, _ = parse_event(raw)
        engine.ingestor.record(Webhook(app_id, envelope, raw))

    try:
        if profile_to is None:
            return timed_loop(step, signed, seconds), None
        profiler = cProfile.Profile()
        result = profiler.runcall(timed_loop, step, signed, seconds)
        profiler.dump_stats(str(profile_to))
        return result, top_costs(profiler)
    finally:
        engine.close()


def run_floor(
    database_url: str, secret: str, signed: Sequence[tuple[str, str]], seconds: float
) -> LoopResult:
    store = open_store(database_url)
    tune_for_server()
    secrets = [secret]

    def step(header: str, raw: str) -> None:
        verify_signature(raw, header, secrets)
        store.insert_many([raw])

    try:
        return timed_loop(step, signed, seconds)
    finally:
        store.close()


def top_costs(profiler: cProfile.Profile, limit: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return out.getvalue()
