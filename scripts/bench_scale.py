#!/usr/bin/env python3
"""Growth (issue 19): do ingest and query rates stay flat as one PostgreSQL database grows, how
many bytes does an event take, and how long does a rebuild take at each size?

One database (`--database`, `scale` by default) is grown step by step to each size N of
`--sizes` (events in the log, as the followers count them: per Stripe webhook a receipt and the
event, plus one registration per new buyer; ~8.8 per customer of the `tests/lifecycles.py` mix,
so 10^7 events are ~1.13 million customers). At each size:

1. grow: customers' lifecycles recorded in bulk by the engine (`benchlib.lifecycle_log`, the path
   `scripts/bench_rebuild.py` builds its logs with), in a child at `--nice`, no projector running;
2. rebuild: `entitlements rebuild` (the operator's command, at `--nice`), timed: it builds the
   read models every later step reads, from the first event;
3. settle: VACUUM (ANALYZE) and CHECKPOINT, timed, so that the bulk load's aftermath (autovacuum's
   first pass, the checkpoint flushing it) does not run during the measurements;
4. storage: `pg_total_relation_size` of the event log's tables (indexes included) per log event,
   and of the read models apart;
5. `entitlements serve` on the database (1 worker and its projector, as `scripts/bench` runs it):
   - W3-style: `GET /v1/permissions` about existing customers, closed loop, 64 connections:
     first each customer at most once (`once`: the asyncio client, which stops when they run
     out), then customers picked at random among all of them (wrk); either way each answer is
     one indexed read of the grants read model (`adapters/http/fast_path.py`);
   - the same at a fixed rate (`--query-rate`, open loop, latency from each request's scheduled
     send): p50/p99;
   - W1-style: signed webhooks, closed loop, half new customers (the fixture mix of `scripts/bench`,
     4-6 KB bodies) and half a new `invoice.paid` for a random existing customer.

Before and after each size, the same on a reference database (`--reference-size` events, made
afresh each time): the machine is shared, so a change with size is read from the ratio to the
references' mean, measured in the same minutes.
Each measurement lasts `--seconds`. Prints one table and writes every figure as JSON under
`bench-results/`. The database stays in `--work-dir` (a throwaway server in `<work-dir>/postgres`
unless `--postgres-url` is given): a later run grows it further or reuses it as it is.

    .venv/bin/python scripts/bench_scale.py --sizes 10000,100000
    nohup .venv/bin/python scripts/bench_scale.py --sizes 100000,1000000,10000000 &  # 40 min, 18 GB
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import httpx  # noqa: E402
import psycopg  # noqa: E402
from benchlib.events import build_stream  # noqa: E402
from benchlib.lifecycle_log import APP_ID, build_log, renewal_body  # noqa: E402
from benchlib.loadgen import (  # noqa: E402
    get_request,
    post_request,
    run_client,
    write_records,
)
from benchlib.report import machine_info  # noqa: E402
from benchlib.servers import Server, engine_config, start_engine  # noqa: E402
from benchlib.storage import ThrowawayPostgres, server_version  # noqa: E402
from benchlib.workloads import API_KEY, SECRET, closed, paced  # noqa: E402

from adapters.stripe.signature import sign  # noqa: E402

RESULTS = PROJECT / "bench-results"
REFERENCE = "scale_ref"  # a small one, made afresh beside each size
WEBHOOK_PATH = f"/v1/stripe/webhooks/{APP_ID}"
CATALOGUE = {  # the products of tests/lifecycles.py, so that its customers' answers mean something
    "skus": [
        {"skuId": "basic", "productId": "prod_basic"},
        {"skuId": "pro", "productId": "prod_pro"},
        {"skuId": "pass", "productId": "prod_pass", "duration": "P30D"},
        {"skuId": "premium_monthly", "productId": "prod_premium"},  # the W1 fixture mix's
    ],
    "permissions": [
        {"permissionId": "access", "skuIds": ["basic", "pro", "pass", "premium_monthly"]},
        {"permissionId": "pro", "skuIds": ["pro"]},
    ],
}
W1_CEILING = 6000  # webhooks/s prepared per second of `--seconds` (more than the engine takes)
W3_CEILING = 30000  # queries/s prepared likewise: each record asked once (wrk's `once` mode)
WARMUP_SECONDS = 2.0
LOG_TABLE = "entitlements_events"  # the event log: Stripe events, receipts, registrations
RECEIPT_TOPIC = "entitlements.webhook_receipt.received"  # one per Stripe webhook recorded


# --- the database ---------------------------------------------------------------------------


def database_url(server_url: str, name: str, fresh: bool = False) -> str:
    """Database `name` on the server, created if missing; dropped first if `fresh`."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        if fresh:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if exists.fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def grow(url: str, size: int, catalogue: Path, nice: int) -> dict[str, Any]:
    """The log grown to `size` events by a child process at niceness `nice`; what it holds."""
    command = ["nice", "-n", str(nice), sys.executable, __file__, "--child-grow", str(size)]
    command += ["--url", url, "--catalogue", str(catalogue)]
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    built = json.loads(done.stdout.strip().splitlines()[-1])
    return {**built, "grow_s": round(time.perf_counter() - started, 1)}


def rebuild(config: Path, nice: int, log: Path) -> dict[str, Any]:
    """`entitlements rebuild`, timed from start to exit (opening the engine included)."""
    exe = str(Path(sys.executable).with_name("entitlements"))
    command = ["nice", "-n", str(nice), exe, "--config", str(config), "rebuild"]
    started = time.perf_counter()
    with log.open("ab") as err:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=err, text=True, check=True)
    seconds = time.perf_counter() - started
    said = re.search(r"rebuilt \S+: (\d+) events in ([\d.]+) s", done.stdout)
    events = int(said.group(1)) if said else 0
    return {
        "rebuild_s": round(seconds, 1),
        "rebuild_own_s": float(said.group(2)) if said else None,  # as the command reports it
        "rebuild_events_per_s": round(events / seconds) if seconds else None,
        "rebuild_output": done.stdout.strip(),
    }


def settle(url: str) -> dict[str, Any]:
    """VACUUM (ANALYZE) and CHECKPOINT after the bulk writes, timed: otherwise autovacuum's
    first pass over the new rows and the checkpoint flushing them run during the measurements
    (a database in service is not in the minutes after a bulk load of all its rows)."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        vacuumed = time.perf_counter()
        # CHECKPOINT needs a superuser (or pg_checkpoint): on a server not ours, skipped.
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("CHECKPOINT")
    done = time.perf_counter()
    return {"vacuum_s": round(vacuumed - started, 1), "checkpoint_s": round(done - vacuumed, 1)}


def storage(url: str) -> dict[str, Any]:
    """Bytes on disk: the event log's table (heap, TOAST and indexes), the read models (every
    other table, live generation), the whole database; per log event (its highest notification
    id) and per Stripe webhook (its receipts)."""
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog',"
            " 'information_schema') ORDER BY 2 DESC"
        ).fetchall()
        database = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        events, webhooks = conn.execute(
            f"SELECT max(notification_id), count(*) FILTER (WHERE topic = %s) FROM {LOG_TABLE}",
            (RECEIPT_TOPIC,),
        ).fetchone() or (0, 0)
        live = conn.execute("SELECT max(generation) FROM projection_generations").fetchone()
    sizes = {name: size for name, size in tables}
    log_bytes = sizes[LOG_TABLE]
    # The read models' live generation; the one before it stays until the next rebuild.
    others = {n: b for n, b in sizes.items() if re.search(r"_g\d+$", n)}
    older = sum(b for n, b in others.items() if not n.endswith(f"_g{live[0] if live else 0}"))
    return {
        "webhooks": webhooks,
        "log_bytes": log_bytes,
        "read_model_bytes": sum(sizes.values()) - log_bytes - older,
        "older_generation_bytes": older,
        "database_bytes": database[0] if database else None,
        "bytes_per_event": round(log_bytes / events) if events else None,
        "bytes_per_webhook": round(log_bytes / webhooks) if webhooks else None,
        "tables": sizes,
    }


# --- the load -------------------------------------------------------------------------------


def query_records(
    path: Path, customers: int, count: int, rng: random.Random, each_once: bool = False
) -> Path:
    """`count` permission queries about random customers of the log; `each_once`: no customer
    twice (at most every customer once), so that no answer comes from the answer cache."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    if each_once:
        picks = iter(rng.sample(range(customers), min(count, customers)))
    else:
        picks = (rng.randrange(customers) for _ in range(count))
    return write_records(
        path, (get_request(f"/v1/permissions?customid=user_cus_gen{i}", headers) for i in picks)
    )


def webhook_records(path: Path, customers: int, count: int, rng: random.Random) -> Path:
    """`count` signed webhooks, one in two about a new customer (the fixture mix of W1), the
    other a new invoice paid by a random existing customer of the log; signed now."""
    tag = os.urandom(4).hex()
    fresh = build_stream(PROJECT, count // 2 // 6 + 64, tag=f"scale{tag}").bodies[: count // 2]
    existing = [
        renewal_body(rng.randrange(customers), f"evt_scale_{tag}_{k}")
        for k in range(count - len(fresh))
    ]
    bodies = [body for pair in zip(fresh, existing, strict=False) for body in pair]
    bodies += existing[len(fresh) :]
    now = int(time.time())
    return write_records(
        path, (post_request(WEBHOOK_PATH, sign(body, SECRET, now), body) for body in bodies)
    )


def wait_until_projected(server: Server, timeout: float) -> float:
    """Seconds until the server's read models have applied every event (W1's backlog)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        health = httpx.get(server.base_url + "/healthz", timeout=10).json()
        if all(p["lag"] == 0 for p in health.get("projections", {}).values()):
            break
        time.sleep(0.2)
    return round(time.monotonic() - started, 1)


def measure_server(
    config: Path, work: Path, name: str, customers: int, args: argparse.Namespace
) -> dict[str, Any]:
    rng = random.Random(customers)
    seconds, connections = args.seconds, args.connections
    first = query_records(
        work / "w3-once.records", customers, int(W3_CEILING * seconds), rng, each_once=True
    )
    warm = query_records(work / "w3-warmup.records", customers, 20_000, rng)
    queries = query_records(work / "w3.records", customers, int(W3_CEILING * seconds), rng)
    at_rate = query_records(
        work / "w3-paced.records", customers, int(args.query_rate * seconds) + 100, rng
    )
    out: dict[str, Any] = {}
    with start_engine(config, 1, work / f"engine-{name}.log") as server:
        started = time.monotonic()
        server.wait_idle(timeout=120)
        out["server_idle_after_s"] = round(time.monotonic() - started, 1)
        say(f"{name} W3: GET /v1/permissions, each customer once (none cached), {seconds:.0f} s")
        # The asyncio client, which stops when the records run out (wrk runs its whole duration).
        before = server.cpu_seconds()
        once = run_client(server.base_url, first, seconds, connections, None, once=True)
        once.server_cpu = (server.cpu_seconds() - before) / once.seconds
        out["w3_once"] = once.as_dict()
        say(f"{name} W3: random customers of {customers:,}, {seconds:.0f} s")
        closed(server, warm, WARMUP_SECONDS, connections, once=True)
        out["w3"] = closed(server, queries, seconds, connections, once=True).as_dict()
        say(f"{name} W3 at {args.query_rate:.0f}/s offered (open loop)")
        out["w3_paced"] = paced(server, at_rate, seconds, args.query_rate).as_dict()
        say(f"{name} W1: webhooks, half new customers, half existing ones, {seconds:.0f} s")
        # Signed just before the run: Stripe's tolerance is 300 s.
        posts = webhook_records(work / "w1.records", customers, int(W1_CEILING * seconds), rng)
        w1 = closed(server, posts, seconds, connections, once=True)
        out["w1"] = w1.as_dict()
        out["w1_projected_after_s"] = wait_until_projected(server, 120)
    return out


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- one size, the table --------------------------------------------------------------------


def measure_database(
    url: str, name: str, size: int, work: Path, args: argparse.Namespace, rebuild_it: bool = True
) -> dict[str, Any]:
    """Grow database `name` to `size` events, rebuild it, weigh it, serve it and load it."""
    catalogue = work / "catalogue.json"
    config = engine_config(work / f"{name}.toml", url, APP_ID, SECRET, API_KEY, catalogue)
    say(f"{name}: grow the log to {size:,} events (nice {args.nice})")
    row: dict[str, Any] = {"size": size, **grow(url, size, catalogue, args.nice)}
    say(f"{name}: {row['events']:,} events, {row['customers']:,} customers ({row['grow_s']} s)")
    if rebuild_it:
        say(f"{name}: entitlements rebuild")
        row.update(rebuild(config, args.nice, work / "rebuild.log"))
        say(f"{name}: rebuilt in {row['rebuild_s']} s")
    say(f"{name}: VACUUM (ANALYZE), CHECKPOINT")
    row.update(settle(url))
    row.update(storage(url))
    row.update(measure_server(config, work, name, row["customers"], args))
    return row


def measure_size(
    server_url: str, size: int, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The grown database at `size`, between two measurements of the reference (a small
    database made afresh each time) in the same minutes: the machine is shared, so what changes
    with size is read from the ratios to the references' mean, not from rates minutes apart."""
    before = measure_database(
        database_url(server_url, REFERENCE, fresh=True), REFERENCE, args.reference_size, work, args
    )
    grown = database_url(server_url, args.database)
    row = measure_database(grown, args.database, size, work, args, args.rebuild)
    after = measure_database(
        database_url(server_url, REFERENCE, fresh=True), REFERENCE, args.reference_size, work, args
    )
    row["references"] = [before, after]
    row["ratios"] = {}
    for kind in ("w1", "w3", "w3_once"):
        mean = (before[kind]["rate"] + after[kind]["rate"]) / 2
        row["ratios"][kind] = round(row[kind]["rate"] / mean, 2) if mean else None
    if args.rebuild:
        mean = (before["rebuild_events_per_s"] + after["rebuild_events_per_s"]) / 2
        row["ratios"]["rebuild"] = round(row["rebuild_events_per_s"] / mean, 2)
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    """One line per size, between its two references (measured right before and after it)."""
    header = ("database", "events", "customers", "grow s", "rebuild s", "rebuild/s", "B/event")
    header += ("B/webhook", "log MB", "models MB", "webhooks/s", "wh p99 ms", "queries/s")
    header += ("q p99 ms", "once/s", "once p99", "paced p50", "paced p99")
    print("  ".join(f"{h:>11}" for h in header))
    for row in rows:
        before, after = row["references"]
        for name, line in ((REFERENCE, before), ("grown", row), (REFERENCE, after)):
            w1, w3, once, paced_ = line["w1"], line["w3"], line["w3_once"], line["w3_paced"]
            cells = (
                name,
                f"{line['events']:,}",
                f"{line['customers']:,}",
                f"{line['grow_s']:.0f}",
                f"{line['rebuild_s']:.1f}" if "rebuild_s" in line else "-",
                f"{line.get('rebuild_events_per_s') or 0:,}",
                f"{line['bytes_per_event']:,}",
                f"{line['bytes_per_webhook']:,}",
                f"{line['log_bytes'] / 1e6:,.0f}",
                f"{line['read_model_bytes'] / 1e6:,.0f}",
                f"{w1['rate']:,.0f}",
                f"{w1['p99_ms']:.1f}",
                f"{w3['rate']:,.0f}",
                f"{w3['p99_ms']:.1f}",
                f"{once['rate']:,.0f}",
                f"{once['p99_ms']:.1f}",
                f"{paced_['p50_ms']:.1f}",
                f"{paced_['p99_ms']:.1f}",
            )
            print("  ".join(f"{c:>11}" for c in cells))
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in row["ratios"].items())
        print(f"  {row['events']:,} events against the references' mean: {ratios}")
    for row in rows:
        for line in (row, *row["references"]):
            kinds = ("w1", "w3", "w3_once", "w3_paced")
            bad = {k: (line[k]["non2xx"], line[k]["errors"]) for k in kinds}
            if any(n or e for n, e in bad.values()):
                print(f"{line['events']:,} events: (non-2xx, errors) {bad}")


@contextlib.contextmanager
def postgres(url: str | None, work: Path) -> Iterator[str]:
    """The given server, or a throwaway one whose data stays in the work dir."""
    if url:
        yield url
        return
    server = ThrowawayPostgres(PROJECT, work / "postgres")
    try:
        yield server.start()
    finally:
        server.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000", help="log events, comma-separated")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=PROJECT / "var" / "bench-scale",
        help="where the database and the run's files stay (default: var/bench-scale)",
    )
    parser.add_argument("--postgres-url", help="a server (default: a throwaway one in work-dir)")
    parser.add_argument("--seconds", type=float, default=10.0, help="each measurement's length")
    parser.add_argument("--connections", type=int, default=64, help="closed-loop connections")
    parser.add_argument("--query-rate", type=float, default=1000.0, help="open-loop queries/s")
    parser.add_argument("--database", default="scale", help="the grown database's name")
    parser.add_argument(
        "--reference-size",
        type=int,
        default=100_000,
        help="events of the reference database measured beside each size (default 10^5)",
    )
    parser.add_argument("--nice", type=int, default=10, help="niceness of growing and rebuilding")
    parser.add_argument(
        "--no-rebuild",
        dest="rebuild",
        action="store_false",
        help="no rebuild of the grown database (its read models must be current already)",
    )
    parser.add_argument("--out", type=Path, help="JSON file (default: bench-results/scale-*)")
    parser.add_argument("--child-grow", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--catalogue", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_grow:
        print(json.dumps(build_log(args.url, args.child_grow, args.catalogue)))
        return 0
    sizes = sorted(int(float(s)) for s in args.sizes.split(","))
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "catalogue.json").write_text(json.dumps(CATALOGUE))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {"workload": "growth (issue 19)", "machine": machine_info()}
    report["options"] = {k: str(v) for k, v in vars(args).items() if not k.startswith("child")}
    report["rows"] = []
    out = args.out or RESULTS / f"scale-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with postgres(args.postgres_url, work) as server_url:
        report["database"] = server_version(server_url)
        for size in sizes:
            report["rows"].append(measure_size(server_url, size, work, args))
            out.write_text(json.dumps(report, indent=2))  # what is measured so far, kept
    print_table(report["rows"])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
