#!/usr/bin/env python3
"""Workload W4 (../shared/spec/BENCHMARKS.md): drop and rebuild every read model from N events.

For each size N (events in the log: receipts, buyer registrations and Stripe events, as the
followers count them) an event log of realistic Stripe lifecycles (`tests/lifecycles.py`) is built
once in `--work-dir` and kept for later runs. Then, each in its own child process so that peak RSS
is that process's own:

- the floor: read and decode the whole log (`select_notifications` in pages of 1,000 plus
  `mapper.to_domain_event`), projecting nothing;
- the rebuild: `projections.rebuild.rebuild` of every follower of the engine (buyer_facts,
  buyer_history), one after the other, each timed.

Prints one table (events/s beside the floor, ratio, peak RSS) and writes every figure as JSON
under `bench-results/`.

    .venv/bin/python scripts/bench_rebuild.py --sizes 10000,100000
    .venv/bin/python scripts/bench_rebuild.py --sizes 1000000 --work-dir var/w4   # reuse logs
    .venv/bin/python scripts/bench_rebuild.py --backend postgresql --sizes 100000
    .venv/bin/python scripts/bench_rebuild.py --sizes 100000 --profile   # cProfile the rebuild
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import itertools
import json
import os
import platform
import pstats
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchlib.lifecycle_log import build_log, open_engine  # noqa: E402

from adapters.bootstrap import Engine  # noqa: E402
from adapters.process.runtime_tuning import tune_for_server  # noqa: E402
from projections.rebuild import rebuild  # noqa: E402

PAGE = 1000  # notifications per read, as the rebuild reads them
RESULTS = PROJECT / "bench-results"


# --- the log ----------------------------------------------------------------------------------


def log_url(backend: str, work_dir: Path, size: int, pg_url: str | None) -> str:
    """Where the log of `size` events lives: its own SQLite file, or its own PostgreSQL schema."""
    if backend == "sqlite":
        return f"sqlite:///{work_dir / f'w4-{size}' / 'log.sqlite'}"
    assert pg_url, "PostgreSQL needs a URL"
    import psycopg

    schema = f"w4_n{size}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    separator = "&" if "?" in pg_url else "?"
    return f"{pg_url}{separator}schema={schema}"


# --- what a child process measures ----------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set size, in MB: VmHWM, not `ru_maxrss`, which keeps the
    peak of the parent's image from before `exec` (the parent that built a log is large)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def read_and_decode(url: str) -> list[dict[str, Any]]:
    """The floor: every event of the log read in pages and decoded, nothing projected."""
    engine = open_engine(url)
    tune_for_server()  # the same process settings as the rebuild
    recorder, mapper = engine.log.recorder, engine.log.mapper
    started, start, count = time.perf_counter(), 0, 0
    while notifications := recorder.select_notifications(
        start, limit=PAGE, inclusive_of_start=False
    ):
        for notification in notifications:
            mapper.to_domain_event(notification)
        count += len(notifications)
        start = notifications[-1].id
    seconds = time.perf_counter() - started
    engine.close()
    return [_figures("floor", count, seconds)]


def rebuild_all(url: str) -> list[dict[str, Any]]:
    """Drop and rebuild every read model, one after the other, each timed."""
    engine = open_engine(url)
    tune_for_server()  # as `entitlements rebuild` does
    figures = [_figures("(open engine)", 0, 0.0)]
    figures.append(_timed_rebuild(engine, engine.follower.projection))
    engine.close()
    return figures


def _timed_rebuild(engine: Engine, projection: Any) -> dict[str, Any]:
    batches: list[tuple[float, int]] = [(time.perf_counter(), 0)]
    report = rebuild(
        engine.log,
        engine.views,
        projection,
        on_batch=lambda count, _: batches.append((time.perf_counter(), count)),
    )
    figures = _figures(report.projection, report.events, report.seconds)
    return {**figures, **_phases(batches), "deriving_s": round(report.deriving_seconds, 1)}


def _phases(batches: list[tuple[float, int]]) -> dict[str, float]:
    """How long the first batch took (it includes dropping the generation before), and the
    rates of the first and last tenths of the batches: does the rebuild slow down as it grows?"""
    tenth = max(1, (len(batches) - 1) // 10)

    def rate(part: list[tuple[float, int]], before: float) -> float:
        return round(sum(count for _, count in part) / (part[-1][0] - before))

    return {
        "first_batch_s": round(batches[1][0] - batches[0][0], 3) if len(batches) > 1 else 0.0,
        "first_tenth_events_per_s": rate(batches[2 : 2 + tenth], batches[1][0]),
        "last_tenth_events_per_s": rate(batches[-tenth:], batches[-tenth - 1][0]),
    }


def _figures(what: str, events: int, seconds: float) -> dict[str, Any]:
    return {
        "what": what,
        "events": events,
        "seconds": round(seconds, 3),
        "events_per_s": round(events / seconds) if seconds else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def child_main(args: argparse.Namespace) -> int:
    """Runs in the child: measure, print the figures as one JSON line."""
    measure = {"floor": read_and_decode, "rebuild": rebuild_all}[args.child]
    if not args.profile_to:
        print(json.dumps(measure(args.url)))
        return 0
    profiler = cProfile.Profile()
    figures = profiler.runcall(measure, args.url)
    profiler.dump_stats(args.profile_to)
    print(json.dumps(figures))
    return 0


def in_child(kind: str, url: str, profile: Path | None = None) -> list[dict[str, Any]]:
    """Run one measurement in a fresh interpreter, so that its peak RSS is its own."""
    command = [sys.executable, __file__, "--child", kind, "--url", url]
    if profile:
        command += ["--profile-to", str(profile)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{kind} child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the run, the table, the JSON -----------------------------------------------------------


def measure_size(backend: str, url: str, size: int, profile: Path | None) -> list[dict]:
    """Build (or reuse) the log of `size` events, then measure the floor and the rebuild."""
    started = time.perf_counter()
    built = build_log(url, size)
    print(f"\rlog of {size:,}: {built} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    floor = in_child("floor", url)[0]
    rows = []
    for figures in in_child("rebuild", url, profile):
        ratio = None
        if figures["events_per_s"] and floor["events_per_s"]:
            ratio = round(figures["events_per_s"] / floor["events_per_s"], 2)
        rows.append(
            {
                "size": size,
                "backend": backend,
                "log_events": built["events"],
                "customers": built["customers"],
                **figures,
                "floor": floor,
                "ratio": ratio,
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    """One line per size, backend and projection; `1st batch s` includes dropping the
    generation before the live one, `last 10%/s` is the rate at the end of the bulk pass,
    `deriving s` the time spent deriving every answer after it."""
    header = ("N", "backend", "projection", "events", "s", "events/s", "floor/s", "ratio")
    header += ("RSS MB", "1st batch s", "last 10%/s", "deriving s")
    print("  ".join(f"{h:>13}" for h in header))
    for row in rows:
        rate = row["events_per_s"]
        cells = (
            f"{row['size']:,}",
            row["backend"],
            row["what"],
            f"{row['events']:,}",
            f"{row['seconds']:.1f}",
            f"{rate:,}" if rate else "-",
            f"{row['floor']['events_per_s']:,}",
            f"{row['ratio']:.2f}x" if row["ratio"] else "-",
            f"{row['peak_rss_mb']:.0f}",
            f"{row.get('first_batch_s', 0):.2f}",
            f"{row.get('last_tenth_events_per_s', 0):,}",
            f"{row.get('deriving_s', 0):.1f}",
        )
        print("  ".join(f"{c:>13}" for c in cells))
    for row in {(r["size"], r["backend"]): r for r in rows}.values():
        floor = row["floor"]
        print(
            f"floor {row['size']:,} {row['backend']}: {floor['events']:,} events read and decoded"
            f" in {floor['seconds']:.1f} s, peak RSS {floor['peak_rss_mb']:.0f} MB"
        )


def machine() -> dict[str, Any]:
    memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    model = [
        line for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line
    ]
    return {
        "cores": os.cpu_count(),
        "memory_mb": int(memory) // 1024,
        "cpu": model[0].split(":", 1)[1].strip() if model else platform.processor(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


@contextlib.contextmanager
def postgres(url: str | None, work_dir: Path) -> Iterator[str]:
    """The given PostgreSQL URL, or a throwaway server in the work dir (stopped at the end)."""
    if url:
        yield url
        return
    script, data = PROJECT / "scripts" / "postgres-throwaway", work_dir / "postgres"
    started = subprocess.run([script, "start", data], capture_output=True, text=True, check=True)
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([script, "stop", data], check=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default="10000,100000", help="events in the log, comma-separated"
    )
    parser.add_argument("--backend", default="sqlite", help="sqlite, postgresql, or both: a,b")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=PROJECT / "var" / "bench-rebuild",
        help="where the logs are kept between runs (default: var/bench-rebuild)",
    )
    parser.add_argument("--postgres-url", help="default: a throwaway server in the work dir")
    parser.add_argument("--profile", action="store_true", help="cProfile each rebuild child")
    parser.add_argument("--out", type=Path, help="JSON file (default: bench-results/rebuild-*)")
    parser.add_argument("--build-only", action="store_true", help="build the logs, measure nothing")
    parser.add_argument("--child", choices=["floor", "rebuild"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    backends = args.backend.split(",")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)  # profiles are written there before the report
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {"workload": "W4 rebuild", "machine": machine(), "rows": []}
    report["profiled"] = args.profile  # cProfile slows the rebuild: those rates are not figures
    with contextlib.ExitStack() as stack:
        pg = None
        if "postgresql" in backends:
            pg = stack.enter_context(postgres(args.postgres_url, args.work_dir))
        for backend, size in itertools.product(backends, sizes):
            url = log_url(backend, args.work_dir, size, pg if backend == "postgresql" else None)
            if args.build_only:
                build_log(url, size)
                continue
            profile = RESULTS / f"profile-w4-{backend}-{size}-{stamp}.pstats"
            report["rows"] += measure_size(backend, url, size, profile if args.profile else None)
            if args.profile:
                print_profile(profile)
    if args.build_only:
        return 0
    print_table(report["rows"])
    out = args.out or RESULTS / f"rebuild-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


def print_profile(path: Path, top: int = 20) -> None:
    print(f"cProfile of the rebuild child ({path.relative_to(PROJECT)}), by own time:")
    pstats.Stats(str(path)).sort_stats("tottime").print_stats(top)


if __name__ == "__main__":
    sys.exit(main())
