#!/usr/bin/env python3
"""W1 alone, with the CPU time each server thread spends per webhook (from /proc).

    scripts/bench_threads.py [--backend sqlite|postgres] [--postgres-url URL] [--seconds 8]

The bench (`scripts/bench`) says how fast; this says where the server's CPU goes: the event loop,
the group-commit writer and the follower each show as one thread (Linux only). It uses the
bench's event stream and wrk, on a fresh database, one uvicorn worker; PostgreSQL needs a URL.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
VENV_PYTHON = PROJECT / ".venv" / "bin" / "python"
if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != VENV_PYTHON.parent.parent.resolve():
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])
sys.path.insert(0, str(PROJECT / "scripts"))

from benchlib.events import build_stream  # noqa: E402
from benchlib.servers import engine_config, start_engine  # noqa: E402
from benchlib.workloads import API_KEY, APP_ID, SECRET, Bench, closed  # noqa: E402


def thread_ticks(pid: int) -> dict[str, int]:
    """Each thread's user + system CPU time, in clock ticks."""
    ticks = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            fields = Path(task, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        ticks[Path(task).name] = int(fields[11]) + int(fields[12])
    return ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    work = PROJECT / "bench-results" / "threads"
    work.mkdir(parents=True, exist_ok=True)
    stream = build_stream(PROJECT, 6000)
    bench = Bench(stream, work, args.seconds, 64, 1, 500.0, False, args.postgres_url)
    config = engine_config(
        work / "engine.toml", bench.fresh_database(args.backend, "threads"), APP_ID, SECRET, API_KEY
    )
    with start_engine(config, 1, work / "engine.log") as server:
        closed(server, bench.post_records("warm", 0, 4000), 2, 64, once=True)
        records = bench.post_records("main", 4000, 25000)
        pid = server.proc.pid
        before = thread_ticks(pid)
        result = closed(server, records, args.seconds, 64, once=True)
        after = thread_ticks(pid)
    hz = os.sysconf("SC_CLK_TCK")
    spent = collections.Counter(
        {
            ("event loop" if tid == str(pid) else f"thread {tid}"): after[tid] - before.get(tid, 0)
            for tid in after
        }
    )
    print(
        f"W1 {args.backend}: {result.rate:,.0f} webhooks/s, p99 {result.p99_ms:.0f} ms, "
        f"server CPU {result.server_cpu:.0%}"
    )
    for name, ticks in spent.most_common(4):
        if ticks:
            print(
                f"  {name:>14}: {ticks / hz / result.ok * 1e6:5.0f} us per webhook "
                f"({ticks / hz / result.seconds:.0%} of a core)"
            )


if __name__ == "__main__":
    main()
