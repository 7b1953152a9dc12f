"""W7's open-loop client: webhooks and queries about the same customers, in its own process.

    python -m benchlib.mixed_client PORT SCHEDULE

SCHEDULE is a pickle of `Schedule`: every request with the instant it is due (seconds after the
start) and its kind. Each request is sent when due whatever happened before, and its latency is
counted from that instant (no coordinated omission): a stalled server shows in every percentile.
Webhooks and queries use separate keep-alive pools, as Stripe and an app backend would.

A probe is a webhook that changes one customer's answer, followed by "permissions now" about
that customer, asked again every `POLL_EVERY` seconds until the answer shows the change (its
body holds `marker`): the visibility delay is from the probe's due instant to that answer.
Prints one JSON line: per kind, ok / non-2xx / errors and p50 / p99 / max in ms.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from benchlib.client import Pool, percentile

POLL_EVERY = 0.005  # seconds between a probe's looks
PROBE_GIVES_UP = 10.0  # seconds; a probe not seen by then counts as 10 s
POOL_SIZE = 256  # per pool: enough that a stalled server never holds the schedule back


@dataclass(frozen=True)
class Request:
    due: float  # seconds after the start
    kind: str  # webhook | now | at | subscriber | history | probe
    raw: bytes
    poll: bytes = b""  # probes: the query asked until it shows the change
    marker: bytes = b""  # probes: what the answer holds once it does


@dataclass
class Schedule:
    requests: list[Request]
    seconds: float


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    non2xx: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def summary(self) -> dict:
        ms = [x * 1000 for x in self.latencies]
        return {
            "ok": self.ok,
            "non2xx": self.non2xx,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "max_ms": max(ms, default=0.0),
        }


class BodyPool(Pool):
    """A pool whose exchanges also return the answer's body (probes read it)."""

    async def fetch(self, raw: bytes) -> tuple[int, bytes]:
        conn = await self._acquire()
        try:
            conn.writer.write(raw)
            head = await conn.reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await conn.reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            conn.close()
            self.opened -= 1
            raise
        self.idle.put_nowait(conn)
        return status, body


async def send(pool: BodyPool, request: Request, due: float, tally: Tally) -> None:
    try:
        status, _ = await pool.fetch(request.raw)
    except (OSError, asyncio.IncompleteReadError, ValueError):
        tally.errors += 1
        return
    tally.statuses[status] = tally.statuses.get(status, 0) + 1
    tally.latencies.append(time.perf_counter() - due)
    if 200 <= status < 300:
        tally.ok += 1
    else:
        tally.non2xx += 1


async def probe(pool: BodyPool, request: Request, due: float, tally: Tally) -> None:
    """Post the change, then ask until the answer shows it."""
    try:
        status, _ = await pool.fetch(request.raw)
        while status >= 300:  # as Stripe would: again until a 2xx
            await asyncio.sleep(POLL_EVERY)
            status, _ = await pool.fetch(request.raw)
        while time.perf_counter() - due < PROBE_GIVES_UP:
            status, body = await pool.fetch(request.poll)
            if status == 200 and request.marker in body:
                break
            await asyncio.sleep(POLL_EVERY)
    except (OSError, asyncio.IncompleteReadError, ValueError):
        tally.errors += 1
        return
    tally.ok += 1
    tally.latencies.append(min(time.perf_counter() - due, PROBE_GIVES_UP))


async def run(port: int, schedule: Schedule) -> dict:
    pools = {name: BodyPool(port, POOL_SIZE) for name in ("webhook", "query", "probe")}
    tallies: dict[str, Tally] = {}
    start = time.perf_counter() + 0.05
    tasks = []
    for request in schedule.requests:
        due = start + request.due
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tally = tallies.setdefault(request.kind, Tally())
        if request.kind == "probe":
            tasks.append(asyncio.create_task(probe(pools["probe"], request, due, tally)))
        else:
            pool = pools["webhook" if request.kind == "webhook" else "query"]
            tasks.append(asyncio.create_task(send(pool, request, due, tally)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    lateness = time.perf_counter() - (start + schedule.seconds)
    return {
        "seconds": elapsed,
        "drain_seconds": max(0.0, lateness),
        "kinds": {kind: tally.summary() for kind, tally in sorted(tallies.items())},
    }


def main(argv: list[str]) -> dict:
    port, path = int(argv[0]), Path(argv[1])
    schedule: Schedule = pickle.loads(path.read_bytes())
    return uvloop.run(run(port, schedule))


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
