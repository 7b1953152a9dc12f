"""W6: `entitlements backfill` from a local recorded events API with no latency, beside W2
measured in the same run (the bar: at least 0.5x W2, so that Stripe's rate limit, never the
engine, bounds a real backfill).

W2 runs first, for the run's duration; the backfill then pages as many events as W2 recorded
(the same bodies, served newest first by `benchlib.recorded_events` in a process of its own),
into a fresh database, with no rate limit: both figures are events recorded per second over a
similar amount of work.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from adapters.backfill import Backfill
from adapters.bootstrap import bootstrap
from adapters.runtime_tuning import tune_for_server
from adapters.stripe.listing import StripeLister
from benchlib import inprocess
from benchlib.report import Row
from benchlib.servers import free_port
from benchlib.workloads import APP_ID, SECRET, Bench, say

MIN_EVENTS = 1000
BAR = 0.5


@contextlib.contextmanager
def recorded_events(work: Path, bodies: list[str]) -> Iterator[str]:
    """The recorded events API, in a process of its own; yields its base URL."""
    path = work / "w6-events.json"
    path.write_text(json.dumps(bodies))
    port = free_port()
    scripts = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "benchlib.recorded_events", str(path), str(port)]
    process = subprocess.Popen(command, cwd=scripts)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/v1/events", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the recorded events API did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def w6(bench: Bench, backend: str) -> dict:
    say(f"W6 {backend}: W2 (engine in process) beside it")
    signed = bench.stream.signed(0, len(bench.stream.bodies), SECRET)
    w2_db = bench.fresh_database(backend, "engine_w6_w2")
    w2, _ = inprocess.run_engine(w2_db, APP_ID, SECRET, signed, bench.seconds)
    count = min(len(signed), max(w2.count, MIN_EVENTS))
    by_id = {json.loads(raw)["id"]: raw for _, raw in signed[:count]}  # Stripe lists each once
    bodies = list(by_id.values())
    say(f"W6 {backend}: backfill of {len(bodies)} events from the recorded API")
    with recorded_events(bench.work, bodies) as url:
        database = bench.fresh_database(backend, "engine_w6")
        engine = bootstrap(inprocess.engine_settings(database, APP_ID, SECRET))
        tune_for_server()
        lister = StripeLister("rk_bench", url, max_per_second=0)  # no limit: no latency
        try:
            started = time.perf_counter()
            summary = Backfill(engine.log, engine.ingestor, lister, APP_ID).run()
            seconds = time.perf_counter() - started
        finally:
            engine.close()
    return {
        "w2": w2.as_dict(),
        "backfill": {
            "events": summary.recorded,
            "seconds": round(seconds, 3),
            "rate": round(summary.recorded / seconds, 1) if seconds else 0.0,
            "summary": summary.render(),
            "requests": lister.requests,
        },
    }


def w6_rows(backend: str, report: dict) -> list[Row]:
    rate, floor = report["backfill"]["rate"], report["w2"]["rate"]
    return [
        Row(
            "W6",
            backend,
            "events/s, backfill",
            rate,
            "W2 same run",
            floor,
            bar=f">={BAR}x W2",
            meets=bool(floor) and rate >= BAR * floor,
            note=report["backfill"]["summary"],
        )
    ]
