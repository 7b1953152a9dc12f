"""An asyncio HTTP/1.1 load client, run in its own process (`python -m benchlib.client`).

    python -m benchlib.client PORT RECORDS SECONDS CONNECTIONS RATE [once]

RATE > 0: open loop. Request i is due at start + i/RATE whatever happened before, and its latency
is counted from that due time, so a stalled server shows in p99 (no coordinated omission).
RATE = 0: closed loop, CONNECTIONS requests in flight, as wrk does (the fallback without wrk).
Prints one JSON line: a LoadResult.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from benchlib.loadgen import read_records


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    ok: int = 0
    non2xx: int = 0
    errors: int = 0

    def add(self, status: int, latency: float) -> None:
        self.latencies.append(latency)
        if 200 <= status < 300:
            self.ok += 1
        else:
            self.non2xx += 1


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def exchange(self, raw: bytes) -> int:
        """Send one request, read the whole answer; its status code."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Up to `size` keep-alive connections, opened on demand and reused."""

    def __init__(self, port: int, size: int) -> None:
        self.port, self.size, self.opened = port, size, 0
        self.idle: asyncio.Queue[Connection] = asyncio.Queue()

    async def send(self, raw: bytes) -> int:
        conn = await self._acquire()
        try:
            status = await conn.exchange(raw)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            conn.close()
            self.opened -= 1
            raise
        self.idle.put_nowait(conn)
        return status

    async def _acquire(self) -> Connection:
        if self.idle.empty() and self.opened < self.size:
            self.opened += 1
            return await Connection.open(self.port)
        return await self.idle.get()


async def one(pool: Pool, raw: bytes, due: float, tally: Tally) -> None:
    try:
        status = await pool.send(raw)
    except (OSError, asyncio.IncompleteReadError, ValueError):
        tally.errors += 1
        return
    tally.add(status, time.perf_counter() - due)


async def paced(pool: Pool, records: list[bytes], seconds: float, rate: float, tally: Tally):
    count = min(len(records), int(seconds * rate))
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(pool, records[i], due, tally)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - start


async def closed(pool: Pool, records: list[bytes], seconds: float, once: bool, tally: Tally):
    start = time.perf_counter()
    cursor = iter(range(len(records)) if once else _cycle(len(records)))

    async def worker() -> None:
        for i in cursor:
            if time.perf_counter() - start > seconds:
                return
            await one(pool, records[i], time.perf_counter(), tally)

    await asyncio.gather(*(worker() for _ in range(pool.size)))
    return time.perf_counter() - start


def _cycle(n: int):
    while True:
        yield from range(n)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def main(argv: list[str]) -> dict:
    port, path, seconds, connections, rate = argv[:5]
    records = read_records(Path(path))
    pool, tally = Pool(int(port), int(connections)), Tally()
    if float(rate) > 0:
        elapsed = await paced(pool, records, float(seconds), float(rate), tally)
    else:
        elapsed = await closed(pool, records, float(seconds), "once" in argv[5:], tally)
    ms = [x * 1000 for x in tally.latencies]
    return {
        "tool": "asyncio-client",
        "seconds": elapsed,
        "ok": tally.ok,
        "non2xx": tally.non2xx,
        "errors": tally.errors,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms, default=0.0),
        "offered_rate": float(rate) or None,
    }


if __name__ == "__main__":
    print(json.dumps(uvloop.run(main(sys.argv[1:]))))
