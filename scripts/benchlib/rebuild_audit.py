"""W4 (rebuild) and W5 (audit) in the harness: each is its own script (`scripts/bench_rebuild.py`,
`scripts/bench_audit.py`, whose docstrings say what they measure), run here as a child process
on the same backend, its JSON read back into the harness's table and file."""

from __future__ import annotations

import json
import subprocess
import sys

from benchlib.report import Row
from benchlib.servers import PROJECT_ROOT
from benchlib.workloads import Bench, say

SCRIPTS = PROJECT_ROOT / "scripts"
W5_BAR_MS = 50.0


def w4(bench: Bench, backend: str) -> dict:
    say(f"W4 {backend}: rebuild of {bench.w4_sizes} events (scripts/bench_rebuild.py)")
    out = bench.work / f"w4-{backend}.json"
    command = [sys.executable, str(SCRIPTS / "bench_rebuild.py"), "--sizes", bench.w4_sizes]
    command += ["--work-dir", str(bench.work / "w4"), "--out", str(out)]
    if backend == "postgres":
        assert bench.postgres_url
        command += ["--backend", "postgresql", "--postgres-url", bench.postgres_url]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def w5(bench: Bench, backend: str) -> dict:
    say(f"W5 {backend}: a customer with {bench.w5_events:,} events (scripts/bench_audit.py)")
    out = bench.work / f"w5-{backend}.json"
    command = [sys.executable, str(SCRIPTS / "bench_audit.py"), "--out", str(out)]
    command += ["--events", str(bench.w5_events), "--repeat", str(bench.w5_repeat)]
    command += ["--database-url", bench.fresh_database(backend, "audit")]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def w4_rows(backend: str, report: dict) -> list[Row]:
    rows = []
    for row in report["rows"]:
        if not row["events_per_s"]:  # the time to open the engine, not a projection's rate
            continue
        size, floor = row["size"], row["floor"]
        rows.append(
            Row(
                "W4",
                backend,
                f"{row['what']} events/s, N={size:,}",
                row["events_per_s"],
                "read + decode the log",
                floor["events_per_s"],
                bar=">=0.5x",
                meets=bool(row["ratio"]) and row["ratio"] >= 0.5,
                note=f"{row['seconds']:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MB",
            )
        )
    return rows


# Not an audit question: the everyday "what may X do now?", asked of the same long history.
EVERYDAY = {"permissions_now_after_a_write"}


def w5_rows(backend: str, report: dict) -> list[Row]:
    rows = []
    for query, figures in report["results"].items():
        audit = query not in EVERYDAY
        rows.append(
            Row(
                "W5",
                backend,
                f"{query} p99 ms",
                figures["p99_ms"],
                "none",
                None,
                higher_is_better=False,
                bar=f"<{W5_BAR_MS:.0f} ms" if audit else "",
                meets=figures["p99_ms"] < W5_BAR_MS if audit else None,
                note=f"p50 {figures['p50_ms']} ms, {figures['n']} runs"
                + ("" if audit else "; not an audit query"),
            )
        )
    return rows
