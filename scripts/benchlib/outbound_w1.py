"""W8's second half: W1 ingest while outbound deliveries run, beside W1 without them.

`entitlements serve` (its projector process runs the delivery worker) with one endpoint: a
receiver on 127.0.0.1 that answers 200 at once (`benchlib/outbound_receiver.py`, a process of
its own). First `PRELOAD` customers' lifecycles are posted and their changes delivered. Then
three closed-loop W1 runs on fresh events, each `--duration` long: before, during and after
a catalogue change that renames the permission (every customid's answer changes: one
delivery each). The bar (BENCHMARKS.md, W8): W1 during the deliveries >= 0.9x W1 without
them (the mean of the runs before and after). Changes delivered per second during that run
are reported beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx

from benchlib.events import build_stream
from benchlib.loadgen import run_client
from benchlib.report import Row
from benchlib.servers import PROJECT_ROOT, SCRIPTS_DIR, engine_config, free_port, start_engine
from benchlib.workloads import API_KEY, APP_ID, SECRET, Bench, closed, say

PRELOAD = 10_000  # customers whose answers the catalogue change touches
PER_SECOND = 3500  # webhooks a W1 run may post per second (its fresh events are written first)
EVENTS_PER_CUSTOMER = 6
OUT_SECRET = "whsec_bench_outbound"
RENAMED = {
    **json.loads((PROJECT_ROOT / "adapters" / "demo-catalogue.json").read_text()),
}
RENAMED["permissions"] = [{**p, "permissionId": "gold"} for p in RENAMED["permissions"]]


def w8_beside_w1(bench: Bench, backend: str) -> None:
    say(f"W8 {backend}: {PRELOAD} customers, then W1 before, during and after deliveries")
    extra = int(3 * bench.seconds * PER_SECOND / EVENTS_PER_CUSTOMER) + 1000  # three W1 runs
    stream = build_stream(PROJECT_ROOT, PRELOAD + extra, tag="w8")
    # Lifecycles are interleaved a few dozen customers at a time: the first share of the events
    # is (nearly) the first PRELOAD customers' whole lives.
    preload = len(stream.bodies) * PRELOAD // (PRELOAD + extra)
    port = free_port()
    receiver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(SCRIPTS_DIR / "benchlib"),
            "outbound_receiver:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ]
    )
    database = bench.fresh_database(backend, "engine_w8")
    config = engine_config(bench.work / f"w8-{backend}.toml", database, APP_ID, SECRET, API_KEY)
    with config.open("a") as out:
        out.write(f'\n[[apps.{APP_ID}.endpoints]]\nurl = "http://127.0.0.1:{port}/hooks"\n'
                  f'secret = "{OUT_SECRET}"\n')  # fmt: skip
    w8_bench = Bench(stream, bench.work, bench.seconds, bench.connections, bench.workers,
                     bench.rate, False, bench.postgres_url)  # fmt: skip
    try:
        with start_engine(config, bench.workers, bench.log(f"engine-w8-{backend}")) as server:
            records = w8_bench.post_records("w8-preload", 0, preload)
            run_client(server.base_url, records, 600, bench.connections, None, once=True)
            first = _settled(port)
            say(f"W8 {backend}: preloaded, {first} deliveries made; W1 before the change")
            cursor = preload
            runs = []
            for phase in ("before", "during", "after"):
                if phase == "during":
                    put = httpx.put(f"{server.base_url}/v1/catalogue", json=RENAMED,
                                    headers=_auth(), timeout=600)  # fmt: skip
                    assert put.status_code == 200, put.text
                    started, delivered = time.monotonic(), _delivered(port)
                count = min(int(bench.seconds * PER_SECOND), len(stream.bodies) - cursor)
                records = w8_bench.post_records(f"w8-{phase}", cursor, count)
                result = closed(server, records, bench.seconds, bench.connections, once=True)
                cursor += result.ok + result.non2xx + result.errors + bench.connections
                runs.append(result)
                if phase == "during":
                    rate = (_delivered(port) - delivered) / (time.monotonic() - started)
                    _settled(port)
            _report(bench, backend, runs, rate)
    finally:
        receiver.terminate()
        receiver.wait()


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def _delivered(port: int) -> int:
    """How many deliveries the receiver has answered."""
    return int(httpx.get(f"http://127.0.0.1:{port}/count", timeout=30).text)


def _settled(port: int, quiet: float = 2.0, timeout: float = 600) -> int:
    """Until no delivery has come for `quiet` seconds; how many came in all."""
    deadline = time.monotonic() + timeout
    last, since = _delivered(port), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.25)
        now = _delivered(port)
        if now != last:
            last, since = now, time.monotonic()
    return last


def _report(bench: Bench, backend: str, runs, delivered_per_s: float) -> None:
    before, during, after = (r.rate for r in runs)
    without = (before + after) / 2
    note = f"before {before:,.0f}/s, after {after:,.0f}/s"
    bench.rows.append(Row("W8", backend, "W1 webhooks/s during deliveries", during,
                          "W1 before/after (mean)", without, bar=">=0.9x",
                          meets=during >= 0.9 * without, note=note))  # fmt: skip
    bench.rows.append(Row("W8", backend, "changes delivered/s meanwhile", delivered_per_s,
                          "none", None, bar=">=1,000/s (alone)",
                          note="while W1 runs closed-loop"))  # fmt: skip
