"""W1 (ingest over HTTP), W2 (ingest in process) and W3 (permission queries), each beside its
floor measured in the same run, on one backend at a time."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchlib import inprocess
from benchlib.events import Stream
from benchlib.loadgen import (
    LoadResult,
    get_request,
    post_request,
    run_client,
    run_closed,
    write_records,
)
from benchlib.report import Row
from benchlib.servers import Server, engine_config, start_engine, start_floor
from benchlib.storage import fresh_postgres_database, sqlite_url

APP_ID = "bench"
SECRET = "whsec_bench_secret_not_for_production"
API_KEY = "bench-rest-key"
WEBHOOK_PATH = f"/v1/stripe/webhooks/{APP_ID}"
FLOOR_POOL = 5000  # floors store bodies without a uniqueness check: they may cycle through these
WARMUP_SECONDS = 2.0
SECOND_SERVERS = 3  # W3: second servers started one after the other, each asked once
W3_QUERIES = 5000
PACED_CONNECTIONS = 256  # enough that a stalled server never holds back the fixed rate


@dataclass
class Bench:
    """Everything one run shares: options, events, where files go, what was measured."""

    stream: Stream
    work: Path
    seconds: float
    connections: int
    workers: int
    rate: float
    profile: bool
    postgres_url: str | None = None
    w4_sizes: str = "10000"  # events in the rebuilt log, comma-separated ("": no W4)
    w5_events: int = 10_000  # events of the audited customer (0: no W5)
    w5_repeat: int = 100  # runs per W5 query
    rows: list[Row] = field(default_factory=list)
    raw: dict = field(default_factory=dict)
    ceiling: dict[str, LoadResult] = field(default_factory=dict)

    def fresh_database(self, backend: str, name: str) -> str:
        if backend == "sqlite":
            path = self.work / f"{name}.sqlite"
            for leftover in self.work.glob(f"{name}.*sqlite*"):
                leftover.unlink()
            return sqlite_url(path)
        assert self.postgres_url, "no PostgreSQL server"
        return fresh_postgres_database(self.postgres_url, f"bench_{name}")

    def post_records(self, name: str, start: int, count: int) -> Path:
        signed = self.stream.signed(start, count, SECRET)
        requests = (post_request(WEBHOOK_PATH, sig, body) for sig, body in signed)
        return write_records(self.work / f"{name}.records", requests)

    def log(self, name: str) -> Path:
        return self.work / f"{name}.log"


def closed(
    server: Server, records: Path, seconds: float, connections: int, once: bool = False
) -> LoadResult:
    """A closed-loop run, with the server's CPU use over it."""
    before = server.cpu_seconds()
    result = run_closed(server.base_url, records, seconds, connections, once)
    result.server_cpu = (server.cpu_seconds() - before) / result.seconds
    return result


def paced(server: Server, records: Path, seconds: float, rate: float) -> LoadResult:
    """A fixed-rate run (open loop), with the server's CPU use over it."""
    before = server.cpu_seconds()
    result = run_client(server.base_url, records, seconds, PACED_CONNECTIONS, rate)
    result.server_cpu = (server.cpu_seconds() - before) / result.seconds
    return result


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- The load generator's ceiling (also W3's floor) --------------------------------------------


def measure_ceiling(bench: Bench) -> None:
    say("load generator ceiling: bare GET and bare POST on an empty Starlette app")
    with start_floor("bare", "", SECRET, bench.workers, bench.log("bare")) as server:
        get = write_records(bench.work / "bare-get.records", [get_request("/bare")])
        signed = bench.stream.signed(0, 1000, SECRET)
        post = write_records(
            bench.work / "bare-post.records", (post_request("/bare", s, b) for s, b in signed)
        )
        closed(server, get, WARMUP_SECONDS, bench.connections)
        bench.ceiling["bare_get"] = closed(server, get, bench.seconds, bench.connections)
        bench.ceiling["bare_post"] = closed(server, post, bench.seconds, bench.connections)
    bench.raw["ceiling"] = {k: v.as_dict() for k, v in bench.ceiling.items()}


# --- W1 floors -----------------------------------------------------------------------------------


def w1_floor(bench: Bench, backend: str, mode: str, fixed_rate: bool) -> dict[str, LoadResult]:
    say(f"W1 {backend}: {mode} floor")
    database = bench.fresh_database(backend, f"floor_{mode}")
    log = bench.log(f"floor-{mode}-{backend}")
    with start_floor(mode, database, SECRET, bench.workers, log) as server:
        records = bench.post_records(f"floor-{mode}", 0, FLOOR_POOL)
        closed(server, records, WARMUP_SECONDS, bench.connections)
        out = {"closed": closed(server, records, bench.seconds, bench.connections)}
        if fixed_rate:
            out["paced"] = paced(server, records, bench.seconds, bench.rate)
    return out


# --- W1 and W3 on the engine ---------------------------------------------------------------------


@dataclass
class EngineRun:
    closed: LoadResult
    paced: LoadResult
    exhausted: bool
    sent: int
    w3: LoadResult | None
    w3_status: str
    w3_first: LoadResult | None = None  # each customer asked once, after a start
    w3_mixed: tuple[LoadResult, LoadResult] | None = None  # (queries, webhooks) at once
    # The same, from second servers on the same database (PostgreSQL), each a fresh process.
    w3_second_first: list[LoadResult] = field(default_factory=list)


def w1_engine(bench: Bench, backend: str) -> EngineRun:
    say(f"W1 {backend}: entitlements serve")
    database = bench.fresh_database(backend, "engine_w1")
    config = engine_config(bench.work / f"engine-{backend}.toml", database, APP_ID, SECRET, API_KEY)
    with start_engine(config, bench.workers, bench.log(f"engine-{backend}")) as server:
        cursor = _send_once(bench, server, 0, 2000, WARMUP_SECONDS)[1]
        paced_count = int(bench.rate * bench.seconds)  # for the fixed-rate run, and again for W3
        available = len(bench.stream.bodies) - cursor - 2 * paced_count - 1000
        if available < 1000:
            raise SystemExit("too few events for --duration and --rate: raise --customers")
        loop, cursor = _send_once(bench, server, cursor, available, bench.seconds)
        exhausted = loop.ok + loop.non2xx + loop.errors >= available - bench.connections
        say(f"W1 {backend}: entitlements serve at {bench.rate:.0f}/s offered")
        count = int(bench.rate * bench.seconds)
        records = bench.post_records("engine-paced", cursor, count)
        at_rate = paced(server, records, bench.seconds, bench.rate)
        cursor += count
        w3, first, status = w3_queries(
            bench, backend, server, bench.stream.customids_before(cursor)
        )
        mixed, second = None, []
        if w3 is not None:
            say(f"W3 {backend}: GET /v1/permissions while {bench.rate:.0f} webhooks/s arrive")
            mixed = w3_under_writes(bench, server, cursor, paced_count)
    if w3 is not None and backend == "postgres":
        second = w3_second_server(bench, backend, config)
    return EngineRun(loop, at_rate, exhausted, cursor, w3, status, first, mixed, second)


def w3_second_server(bench: Bench, backend: str, config: Path) -> list[LoadResult]:
    """Second servers on the same PostgreSQL, each just started: their first answer to each
    customer (a host added to a cluster must answer as fast as the first). Each is asked once
    it has started: ready, and its processes (the projector's start included) idle, as the
    first server was when its first answers were measured. A pass takes a fraction of a
    second, so one pass is mostly noise: SECOND_SERVERS servers, one after the other."""
    say(f"W3 {backend}: {SECOND_SERVERS} second servers' first answers")
    first, passes = bench.work / "w3-first.records", []
    for n in range(SECOND_SERVERS):
        log = bench.log(f"engine-{backend}-second-{n}")
        with start_engine(config, bench.workers, log) as second:
            second.wait_idle()
            passes.append(run_client(second.base_url, first, 60, bench.connections, None, True))
    return passes


def _send_once(
    bench: Bench, server: Server, start: int, count: int, seconds: float
) -> tuple[LoadResult, int]:
    """Send bodies[start:start+count] (each once) for `seconds`; the result and the next cursor."""
    records = bench.post_records("engine", start, count)
    result = closed(server, records, seconds, bench.connections, once=True)
    used = result.ok + result.non2xx + result.errors + bench.connections  # in flight at the end
    return result, min(start + used, start + count)


def w3_queries(
    bench: Bench, backend: str, server: Server, customids: list[str]
) -> tuple[LoadResult | None, LoadResult | None, str]:
    """GET /v1/permissions for random linked customers, when the route exists."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    probe_path = f"/v1/permissions?customid={customids[0]}"
    probe = httpx.get(server.base_url + probe_path, headers=headers, timeout=10)
    if probe.status_code != 200:
        return None, None, f"not available (probe: HTTP {probe.status_code} {probe.text[:120]})"
    _wait_until_projected(server)
    say(f"W3 {backend}: GET /v1/permissions")
    picks = [random.choice(customids) for _ in range(W3_QUERIES)]
    records = write_records(
        bench.work / "w3.records",
        (get_request(f"/v1/permissions?customid={c}", headers) for c in picks),
    )
    # Each customer's first answer is derived (then cached until a write touches them): one
    # pass over every customer asked, measured apart, then the steady state.
    first = write_records(
        bench.work / "w3-first.records",
        (get_request(f"/v1/permissions?customid={c}", headers) for c in sorted(set(picks))),
    )
    # Asked once the server is idle (W1's projection done), as the second servers are.
    server.wait_idle()
    # The asyncio client: it stops when the records run out (wrk runs its whole duration).
    first_pass = run_client(server.base_url, first, 60, bench.connections, None, once=True)
    closed(server, records, WARMUP_SECONDS, bench.connections)
    result = closed(server, records, bench.seconds, bench.connections)
    return result, first_pass, f"available (probe: {probe.text[:120]})"


def _wait_until_projected(server: Server, timeout: float = 120.0) -> None:
    """W3 measures queries, not a read model still catching up on W1's webhooks (each batch it
    applies moves the position that cached answers are stamped with)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(server.base_url + "/healthz", timeout=10).json()
        if all(p["lag"] == 0 for p in health.get("projections", {}).values()):
            return
        time.sleep(0.2)
    say("W3: the read model did not catch up in time; measuring anyway")


def w3_under_writes(
    bench: Bench, server: Server, cursor: int, count: int
) -> tuple[LoadResult, LoadResult]:
    """The W3 queries while webhooks arrive at the fixed rate: each webhook ends the cached
    answers of the customer it touches (and only those)."""
    posts = bench.post_records("engine-mixed", cursor, count)
    webhooks: list[LoadResult] = []
    writer = threading.Thread(
        target=lambda: webhooks.append(paced(server, posts, bench.seconds, bench.rate))
    )
    writer.start()
    queries = closed(server, bench.work / "w3.records", bench.seconds, bench.connections)
    writer.join()
    return queries, webhooks[0]


# --- W2 ------------------------------------------------------------------------------------------


def w2(bench: Bench, backend: str) -> dict[str, inprocess.LoopResult]:
    say(f"W2 {backend}: engine in process")
    signed = bench.stream.signed(0, len(bench.stream.bodies), SECRET)
    engine_db = bench.fresh_database(backend, "engine_w2")
    engine, _ = inprocess.run_engine(engine_db, APP_ID, SECRET, signed, bench.seconds)
    say(f"W2 {backend}: verify + insert loop")
    floor_db = bench.fresh_database(backend, "floor_w2")
    floor = inprocess.run_floor(floor_db, SECRET, signed, bench.seconds)
    if bench.profile:
        profile_w2(bench, backend, signed)
    return {"engine": engine, "floor": floor}


def profile_w2(bench: Bench, backend: str, signed: list[tuple[str, str]]) -> None:
    say(f"W2 {backend}: engine in process under cProfile")
    database = bench.fresh_database(backend, "engine_w2_profile")
    stats = bench.work.parent / f"profile-w2-{backend}-{time.strftime('%Y%m%d-%H%M%S')}.pstats"
    result, top = inprocess.run_engine(database, APP_ID, SECRET, signed, bench.seconds, stats)
    bench.raw.setdefault("profiles", {})[backend] = {
        "pstats": str(stats),
        "events": result.count,
        "top": top,
    }
    print(top)
