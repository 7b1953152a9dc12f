"""`scripts/bench`: run W1, W2 and W3 on SQLite and/or PostgreSQL beside same-run floors."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shutil
import time
from pathlib import Path

from benchlib import backfill_bench, mixed, outbound_w1, rebuild_audit, workloads
from benchlib.events import build_stream
from benchlib.loadgen import LoadResult, have_wrk
from benchlib.report import Row, machine_info, markdown_table, table, write_json
from benchlib.servers import PROJECT_ROOT
from benchlib.storage import ThrowawayPostgres, server_version
from benchlib.workloads import Bench, EngineRun, say


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark the engine (W1 ingest over HTTP, W2 ingest in process, W3 "
        "permission queries, W4 rebuild, W5 audit, W6 backfill, W7 mixed load) beside floors "
        "measured in the same run; print one table and write a JSON file. See docs/benchmarks.md.",
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--postgres-url",
        help="PostgreSQL server to use (a database is created "
        "per measurement); default: start a throwaway one",
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="seconds per measurement (default 10)"
    )
    parser.add_argument(
        "--customers",
        type=int,
        default=6000,
        help="simulated customers, 5-7 events each (default 6000)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=64,
        help="concurrent connections of the closed-loop runs (default 64)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes, engine and floors alike (default 1)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=500.0,
        help="webhooks/s offered in W1's fixed-rate run (default 500)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also run W2 under cProfile and print the top costs"
    )
    parser.add_argument(
        "--w4-sizes",
        default="10000",
        help="W4: events in the rebuilt log, comma-separated (default 10000; '' skips W4)",
    )
    parser.add_argument(
        "--w5-events",
        type=int,
        default=10_000,
        help="W5: events of the audited customer (default 10000; 0 skips W5)",
    )
    parser.add_argument(
        "--w5-repeat", type=int, default=100, help="W5: runs per query (default 100)"
    )
    parser.add_argument(
        "--only",
        default="w1,w2,w3,w4,w5,w6,w7",
        help="workloads to run, comma-separated (default all; W3 runs on W1's server)",
    )
    parser.add_argument("--w7-customers", type=int, default=1000, help="W7: customers (1000)")
    parser.add_argument(
        "--w7-rate",
        type=float,
        default=300.0,
        help="W7: webhooks/s and queries/s offered, each (default 300)",
    )
    parser.add_argument(
        "--w7-seconds", type=float, default=20.0, help="W7: seconds per run (default 20)"
    )
    parser.add_argument(
        "--out", type=Path, help="JSON results file (default bench-results/bench-<date>.json)"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the work directory (databases, logs, request files)",
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="also print the table as Markdown (for docs/benchmarks.md)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    results_dir = PROJECT_ROOT / "bench-results"
    work = results_dir / f"work-{stamp}"
    work.mkdir(parents=True)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    say(f"building {args.customers} customers' lifecycles from the fixtures")
    bench = Bench(
        build_stream(PROJECT_ROOT, args.customers),
        work,
        args.duration,
        args.connections,
        args.workers,
        args.rate,
        args.profile,
        w4_sizes=args.w4_sizes,
        w5_events=args.w5_events,
        w5_repeat=args.w5_repeat,
    )
    only = {name.strip().lower() for name in args.only.split(",") if name.strip()}
    w7_settings = mixed.W7Settings(
        customers=args.w7_customers,
        webhook_rate=args.w7_rate,
        query_rate=args.w7_rate,
        seconds=args.w7_seconds,
    )
    say(
        f"{len(bench.stream.bodies)} events, mean body "
        f"{sum(map(len, bench.stream.bodies)) / len(bench.stream.bodies):,.0f} bytes"
    )
    started = time.monotonic()
    versions: dict[str, str] = {}
    with contextlib.ExitStack() as cleanup:
        if not args.keep:
            cleanup.callback(shutil.rmtree, work, True)
        workloads.measure_ceiling(bench)
        for backend in backends:
            if backend == "postgres":
                bench.postgres_url = args.postgres_url or _throwaway(cleanup, work)
                versions[backend] = server_version(bench.postgres_url)
            else:
                versions[backend] = server_version("sqlite:")
            run_backend(bench, backend, only, w7_settings)
    document = _document(args, bench, versions, time.monotonic() - started)
    out = args.out or results_dir / f"bench-{stamp}.json"
    write_json(out, document)
    print()
    print(_ceiling_line(bench))
    print(table(bench.rows))
    if args.markdown:
        print()
        print(markdown_table(bench.rows))
    print(f"\nresults: {out}")
    return 0


def _throwaway(cleanup: contextlib.ExitStack, work: Path) -> str:
    say("starting a throwaway PostgreSQL (scripts/postgres-throwaway)")
    server = ThrowawayPostgres(PROJECT_ROOT, work / "postgres")
    cleanup.callback(server.close)
    return server.start()


def run_backend(bench: Bench, backend: str, only: set[str], w7: mixed.W7Settings) -> None:
    bench.raw.setdefault("backends", {})[backend] = {}
    if only & {"w1", "w2", "w3"}:
        run_w1_w2_w3(bench, backend)
    if bench.w4_sizes and "w4" in only:
        report = rebuild_audit.w4(bench, backend)
        bench.raw["backends"][backend]["w4"] = report
        bench.rows += rebuild_audit.w4_rows(backend, report)
    if bench.w5_events and "w5" in only:
        report = rebuild_audit.w5(bench, backend)
        bench.raw["backends"][backend]["w5"] = report
        bench.rows += rebuild_audit.w5_rows(backend, report)
    if "w6" in only:
        report = backfill_bench.w6(bench, backend)
        bench.raw["backends"][backend]["w6"] = report
        bench.rows += backfill_bench.w6_rows(backend, report)
    if "w8" in only:  # W8's second half; its delivery rate alone: scripts/bench_outbound.py
        try:
            outbound_w1.w8_beside_w1(bench, backend)
        except Exception as error:
            say(f"W8 {backend} failed: {error}")
    if "w7" in only:
        report = mixed.w7(bench, backend, w7)
        bench.raw["backends"][backend]["w7"] = report
        bench.rows += mixed.w7_rows(backend, report)


def run_w1_w2_w3(bench: Bench, backend: str) -> None:
    naive = workloads.w1_floor(bench, backend, "naive", fixed_rate=True)
    group = workloads.w1_floor(bench, backend, "group", fixed_rate=False)
    engine = workloads.w1_engine(bench, backend)
    w2 = workloads.w2(bench, backend)
    bench.raw["backends"][backend] |= {
        "w1": {
            "naive_floor": {k: v.as_dict() for k, v in naive.items()},
            "group_floor": {k: v.as_dict() for k, v in group.items()},
            "engine": {
                "closed": engine.closed.as_dict(),
                "paced": engine.paced.as_dict(),
                "events_sent": engine.sent,
                "pool_exhausted": engine.exhausted,
            },
        },
        "w2": {k: v.as_dict() for k, v in w2.items()},
        "w3": {
            "status": engine.w3_status,
            "engine": engine.w3.as_dict() if engine.w3 else None,
            "first_pass": engine.w3_first.as_dict() if engine.w3_first else None,
            "second_servers_first_pass": [r.as_dict() for r in engine.w3_second_first],
            "under_writes": [r.as_dict() for r in engine.w3_mixed] if engine.w3_mixed else None,
        },
    }
    bench.rows += w1_rows(bench, backend, naive, group, engine)
    bench.rows += w2_rows(backend, w2)
    bench.rows += w3_rows(bench, backend, engine)


def w1_rows(
    bench: Bench,
    backend: str,
    naive: dict[str, LoadResult],
    group: dict[str, LoadResult],
    engine: EngineRun,
) -> list[Row]:
    e, n, g, ep, np_ = engine.closed, naive["closed"], group["closed"], engine.paced, naive["paced"]
    note = _errors_note(e) + (" pool exhausted: raise --customers" if engine.exhausted else "")
    cpu = f"server CPU {_pct(e.server_cpu)} vs {_pct(n.server_cpu)}"
    by_naive = e.rate >= n.rate and (backend != "sqlite" or e.rate >= 2000)
    rate_bar = ">=1.0x & >=2,000/s" if backend == "sqlite" else ">=1.0x"
    c = bench.connections
    return [
        Row(
            "W1",
            backend,
            f"webhooks/s, {c} conns",
            e.rate,
            "naive insert/request",
            n.rate,
            bar=rate_bar,
            meets=by_naive,
            note=f"{cpu}{note}",
        ),
        Row(
            "W1",
            backend,
            f"webhooks/s, {c} conns",
            e.rate,
            "group-commit insert",
            g.rate,
            bar=">=0.8x (moonshot)",
            meets=e.rate >= 0.8 * g.rate,
            note=f"server CPU {_pct(e.server_cpu)} vs {_pct(g.server_cpu)}",
        ),
        Row(
            "W1",
            backend,
            "p50 ms, closed loop",
            e.p50_ms,
            "naive insert/request",
            n.p50_ms,
            higher_is_better=False,
        ),
        Row(
            "W1",
            backend,
            "p99 ms, closed loop",
            e.p99_ms,
            "naive insert/request",
            n.p99_ms,
            higher_is_better=False,
        ),
        Row(
            "W1",
            backend,
            f"p99 ms at {bench.rate:.0f}/s offered",
            ep.p99_ms,
            f"naive at {bench.rate:.0f}/s",
            np_.p99_ms,
            higher_is_better=False,
            bar="<50 ms",
            meets=ep.p99_ms < 50 and ep.ok >= 0.99 * bench.rate * bench.seconds,
            note=_errors_note(ep).strip(),
        ),
    ]


def w2_rows(backend: str, w2: dict) -> list[Row]:
    engine, floor = w2["engine"], w2["floor"]
    note = "pool exhausted: raise --customers" if engine.exhausted else ""
    return [
        Row(
            "W2",
            backend,
            "events/s, in process",
            engine.rate,
            "verify + insert loop",
            floor.rate,
            note=note,
        ),
        Row(
            "W2",
            backend,
            "p99 ms per event",
            engine.p99_ms,
            "verify + insert loop",
            floor.p99_ms,
            higher_is_better=False,
        ),
    ]


def w3_rows(bench: Bench, backend: str, engine: EngineRun) -> list[Row]:
    floor = bench.ceiling["bare_get"]
    if engine.w3 is None:
        return [
            Row(
                "W3",
                backend,
                "queries/s",
                None,
                "bare GET fixed JSON",
                floor.rate,
                bar=">=0.7x",
                note="GET /v1/permissions not available",
            )
        ]
    q = engine.w3
    return [
        Row(
            "W3",
            backend,
            "queries/s",
            q.rate,
            "bare GET fixed JSON",
            floor.rate,
            bar=">=0.7x",
            meets=q.rate >= 0.7 * floor.rate,
            note=_errors_note(q).strip(),
        ),
        Row(
            "W3",
            backend,
            "p99 ms",
            q.p99_ms,
            "bare GET fixed JSON",
            floor.p99_ms,
            higher_is_better=False,
        ),
        *_first_pass_rows(backend, engine.w3_first, floor),
        *_second_server_rows(backend, engine.w3_second_first, engine.w3_first),
        *_mixed_rows(backend, engine.w3_mixed, floor, bench.rate),
    ]


def _mixed_rows(
    backend: str, mixed: tuple[LoadResult, LoadResult] | None, floor: LoadResult, offered: float
) -> list[Row]:
    """Queries while webhooks arrive: each webhook ends only its customer's cached answers."""
    if mixed is None:
        return []
    queries, webhooks = mixed
    rate = f"{offered:.0f}/s"
    return [
        Row(
            "W3",
            backend,
            f"queries/s, webhooks {rate}",
            queries.rate,
            "bare GET fixed JSON",
            floor.rate,
        ),
        Row(
            "W3",
            backend,
            f"query p99 ms, webhooks {rate}",
            queries.p99_ms,
            "bare GET fixed JSON",
            floor.p99_ms,
            higher_is_better=False,
        ),
        Row(
            "W3",
            backend,
            "webhook p99 ms meanwhile",
            webhooks.p99_ms,
            "none",
            None,
            higher_is_better=False,
            bar="<50 ms",
            meets=webhooks.p99_ms < 50,
        ),
    ]


def _first_pass_rows(
    backend: str, first: LoadResult | None, floor: LoadResult, whose: str = ""
) -> list[Row]:
    """Each customer asked once after a start: nothing of theirs read before."""
    if first is None:
        return []
    return [
        Row(
            "W3",
            backend,
            f"{whose}first answers/s",
            first.rate,
            "bare GET fixed JSON",
            floor.rate,
            bar=">=0.5x",
            meets=first.rate >= 0.5 * floor.rate,
            note=_errors_note(first).strip(),
        ),
        Row(
            "W3",
            backend,
            f"{whose}first answers p99 ms",
            first.p99_ms,
            "bare GET fixed JSON",
            floor.p99_ms,
            higher_is_better=False,
        ),
    ]


def _second_server_rows(
    backend: str, passes: list[LoadResult], first: LoadResult | None
) -> list[Row]:
    """Fresh servers on the same database against the first server, each customer asked once:
    the median of their passes (each a fraction of a second), every one of them in the note."""
    if not passes or first is None:
        return []
    median = sorted(passes, key=lambda p: p.rate)[len(passes) // 2]
    each = ", ".join(f"{p.rate:,.0f}" for p in passes)
    return [
        Row(
            "W3",
            backend,
            f"a second server's first answers/s (median of {len(passes)})",
            median.rate,
            "the first server's first answers",
            first.rate,
            bar=">=0.9x (as fast)",
            meets=median.rate >= 0.9 * first.rate,
            note=f"each: {each}/s {_errors_note(median)}".strip(),
        )
    ]


def _pct(share: float | None) -> str:
    return "?" if share is None else f"{share:.0%}"


def _errors_note(result: LoadResult) -> str:
    if not (result.non2xx or result.errors):
        return ""
    return f" non-2xx {result.non2xx}, socket errors {result.errors}"


def _ceiling_line(bench: Bench) -> str:
    get, post = bench.ceiling["bare_get"], bench.ceiling["bare_post"]
    tool = "wrk (1 thread)" if have_wrk() else "asyncio client"
    return (
        f"load generator: {tool}, {bench.connections} connections; against a bare Starlette "
        f"app ({bench.workers} worker): GET {get.rate:,.0f}/s (generator at "
        f"{get.client_cpu:.0%} of a core), POST 4.5 KB {post.rate:,.0f}/s "
        f"({post.client_cpu:.0%} of a core)"
    )


def _document(
    args: argparse.Namespace, bench: Bench, versions: dict[str, str], elapsed: float
) -> dict:
    return {
        "machine": {**machine_info(), "backends": versions},
        "settings": {
            "duration_s": args.duration,
            "customers": args.customers,
            "events": len(bench.stream.bodies),
            "lifecycles": bench.stream.lifecycles,
            "mean_body_bytes": round(sum(map(len, bench.stream.bodies)) / len(bench.stream.bodies)),
            "connections": args.connections,
            "workers": args.workers,
            "fixed_rate": args.rate,
            "load_generator": "wrk" if have_wrk() else "asyncio-client",
            "elapsed_s": round(elapsed, 1),
        },
        "rows": [r.as_dict() for r in bench.rows],
        "load_generator_ceiling": bench.raw.get("ceiling"),
        "runs": bench.raw.get("backends"),
        "profiles": bench.raw.get("profiles"),
    }
