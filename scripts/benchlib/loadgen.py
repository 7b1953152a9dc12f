"""Load generators: wrk (closed loop) and a paced asyncio client (open loop, fixed rate).

Both send pre-built raw HTTP/1.1 requests read from a records file, so the generator does no
signing or formatting while it runs. wrk runs one thread with many connections (its ceiling, tens
of thousands of requests/s, is measured against the bare endpoints and printed). Only 2xx answers
count as done; other statuses and socket errors are counted apart.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent.parent
LUA = Path(__file__).with_name("records.lua")


@dataclass
class LoadResult:
    tool: str
    seconds: float
    ok: int  # 2xx answers
    non2xx: int
    errors: int  # connect/read/write errors and timeouts
    p50_ms: float
    p99_ms: float
    max_ms: float
    offered_rate: float | None = None
    client_cpu: float = 0.0  # the generator's CPU time over wall time (1.0 = one core busy)
    server_cpu: float | None = None  # the server processes' CPU time over wall time

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "rate": round(self.rate, 1)}


def post_request(path: str, signature: str, body: str) -> bytes:
    data = body.encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Stripe-Signature: {signature}\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def get_request(path: str, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def write_records(path: Path, requests: Iterable[bytes]) -> Path:
    with path.open("wb") as f:
        for raw in requests:
            f.write(b"%d\n" % len(raw))
            f.write(raw)
    return path


def read_records(path: Path) -> list[bytes]:
    records = []
    with path.open("rb") as f:
        while line := f.readline():
            records.append(f.read(int(line)))
    return records


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def run_wrk(
    base_url: str, records: Path, seconds: float, connections: int, once: bool
) -> LoadResult:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "-s",
        str(LUA),
        base_url,
        "--",
        str(records),
        "once" if once else "cycle",
    ]
    out, cpu = _child(argv, dict(os.environ))
    line = next(x for x in out.splitlines() if x.startswith("BENCH-JSON "))
    raw = json.loads(line.removeprefix("BENCH-JSON "))
    return LoadResult(
        tool="wrk",
        seconds=raw["duration_us"] / 1e6,
        ok=raw["requests"] - raw["status_errors"],
        non2xx=raw["status_errors"],
        errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        client_cpu=cpu / (raw["duration_us"] / 1e6),
    )


def run_client(
    base_url: str,
    records: Path,
    seconds: float,
    connections: int,
    rate: float | None,
    once: bool = False,
) -> LoadResult:
    """The asyncio client in its own process: paced at `rate`/s, or closed loop when None."""
    port = base_url.rsplit(":", 1)[1]
    argv = [
        sys.executable,
        "-m",
        "benchlib.client",
        port,
        str(records),
        str(seconds),
        str(connections),
        str(rate or 0),
        *(["once"] if once else []),
    ]
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS_DIR)}
    out, cpu = _child(argv, env)
    result = LoadResult(**json.loads(out.strip().splitlines()[-1]))
    result.client_cpu = cpu / result.seconds if result.seconds else 0.0
    return result


def _child(argv: list[str], env: dict[str, str]) -> tuple[str, float]:
    """Run the generator; its stdout and the CPU seconds it used (servers are never reaped
    while a measurement runs, so the children's usage grows by the generator's alone)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    if done.returncode != 0:  # the generator's own traceback, not only its exit status
        raise RuntimeError(f"load generator failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out = done.stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, cpu


def run_closed(
    base_url: str, records: Path, seconds: float, connections: int, once: bool
) -> LoadResult:
    """Closed loop: wrk when installed, else the asyncio client."""
    if have_wrk():
        return run_wrk(base_url, records, seconds, connections, once)
    return run_client(base_url, records, seconds, connections, None, once)
