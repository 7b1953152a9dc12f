"""The cluster's load client: Stripe and an app backend, in the switch's namespace.

    ip netns exec ent-sw python -m clusterlib.load ARGS.json

Webhooks: the realistic mix of `scripts/bench` (benchlib.events: whole customer lifecycles from
the recorded fixtures, fresh ids), each due at start + i/rate whatever happened before (open
loop), signed when sent. As Stripe does, whatever did not get a 2xx (an error status, a cut
connection, no answer within `request_timeout`) is sent again later, signed again, with a
growing delay (`retry_delays`), until it does or the drain time is over. Every `direct_every`-th
first attempt goes straight to an engine host instead of the load balancer (what a host itself
answers when the database is away); retries always go to the load balancer.

Time-driven customers (`timed`: seconds after the start): one webhook each, sent first, that
leaves a customid entitled until that instant, when its answer changes by time alone
(clusterlib.timed).

Queries: `GET /v1/permissions` at `query_rate` about random customers with an acknowledged event,
or, given `query_customids` (customers of an existing database), about random ones of those.

Writes one JSON document (ARGS' `out`): every attempt (start, latency, status, target), every
event's id and whether it was acknowledged, per-second counts, and the customids written to.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib.events import build_stream

from adapters.stripe.signature import sign
from clusterlib import timed

EVENTS_PER_CUSTOMER = 6.3  # the mean of benchlib.events' lifecycles


class Pool:
    """Keep-alive HTTP/1.1 connections to one address, opened on demand, at most `size`."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self.host, self.port, self.size = host, port, size
        self.opened = 0
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.freed = asyncio.Condition()

    async def exchange(self, raw: bytes, timeout: float) -> tuple[int, bytes]:
        """(status, body); raises OSError / TimeoutError / IncompleteReadError."""
        async with asyncio.timeout(timeout):
            conn = await self._acquire()
            try:
                reader, writer = conn
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length, close = 0, False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and b"close" in value.lower():
                        close = True
                body = await reader.readexactly(length)
            except BaseException:
                await self._discard(conn)
                raise
            if close:
                await self._discard(conn)
            else:
                async with self.freed:
                    self.idle.append(conn)
                    self.freed.notify()
            return status, body

    async def _acquire(self):
        async with self.freed:
            while not self.idle and self.opened >= self.size:
                await self.freed.wait()
            if self.idle:
                return self.idle.pop()
            self.opened += 1
        try:
            return await asyncio.open_connection(self.host, self.port)
        except BaseException:
            async with self.freed:
                self.opened -= 1
                self.freed.notify()
            raise

    async def _discard(self, conn) -> None:
        conn[1].close()
        async with self.freed:
            self.opened -= 1
            self.freed.notify()


@dataclass
class Args:
    target: tuple[str, int]  # the load balancer
    out: str
    seconds: float = 20.0
    webhook_rate: float = 100.0
    query_rate: float = 50.0
    drain_seconds: float = 60.0  # after the schedule: retries go on until all acked or this
    retry_delays: tuple[float, ...] = (1.0, 2.0, 4.0)  # then the last one, again and again
    request_timeout: float = 20.0  # seconds before a sender gives up on an answer
    direct: list[tuple[str, int]] = field(default_factory=list)
    direct_every: int = 0  # 0: never
    secret: str = ""
    app_id: str = "demo"
    rest_key: str = ""
    closed_connections: int = 0  # > 0: closed loop (capacity runs), no pacing
    queries_only: bool = False
    preload: int = 0  # events whose customers the queries ask about (queries_only)
    query_customids: list[str] = field(default_factory=list)  # else the acknowledged ones
    project_root: str = "."
    timed: list[float] = field(default_factory=list)  # instants (s after the start), see above
    renewal_leeway: int = 86400  # the app's, in seconds: when a lapsed period changes the answer


@dataclass
class Event:
    body: str
    event_id: str
    owner: int
    attempts: int = 0
    acked_at: float | None = None


class Client:
    def __init__(self, args: Args) -> None:
        self.args = args
        self.pools = {"lb": Pool(*args.target, 256)}
        for number, (host, port) in enumerate(args.direct, 1):
            self.pools[f"direct{number}"] = Pool(host, port, 32)
        self.query_pool = Pool(*args.target, 64)
        self.attempts: list[tuple[float, float, int, str, int]] = []  # start, s, status, to, i
        self.queries: list[tuple[float, float, int]] = []
        self.events: list[Event] = []
        self.customids: list[str] = []
        self.stripe_customers: list[str] = []
        self.acked_owners: list[int] = []
        self.start = 0.0
        self.retrying: set[asyncio.Task] = set()
        self.timed: list[timed.Timed] = []
        self.path = f"/v1/stripe/webhooks/{args.app_id}".encode()

    def now(self) -> float:
        return time.monotonic() - self.start

    def webhook_request(self, body: str) -> bytes:
        payload = body.encode()
        signature = sign(body, self.args.secret, int(time.time()))
        return (
            b"POST " + self.path + b" HTTP/1.1\r\nHost: cluster\r\n"
            b"Content-Type: application/json\r\nStripe-Signature: "
            + signature.encode()
            + b"\r\nContent-Length: "
            + str(len(payload)).encode()
            + b"\r\n\r\n"
            + payload
        )

    async def deliver(self, index: int, target: str) -> None:
        event = self.events[index]
        event.attempts += 1
        started = self.now()
        try:
            status, _ = await self.pools[target].exchange(
                self.webhook_request(event.body), self.args.request_timeout
            )
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            status = 0
        self.attempts.append((started, self.now() - started, status, target, index))
        if 200 <= status < 300:
            if event.acked_at is None:
                event.acked_at = self.now()
                self.acked_owners.append(event.owner)
            return
        delays = self.args.retry_delays
        delay = delays[min(event.attempts, len(delays)) - 1]
        task = asyncio.create_task(self.retry(index, delay))
        self.retrying.add(task)
        task.add_done_callback(self.retrying.discard)

    async def retry(self, index: int, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.now() < self.args.seconds + self.args.drain_seconds:
            await self.deliver(index, "lb")

    async def query(self) -> None:
        if self.args.query_customids:
            customid = random.choice(self.args.query_customids)
        elif self.acked_owners:
            customid = self.customids[random.choice(self.acked_owners)]
        else:
            return
        raw = (
            f"GET /v1/permissions?customid={customid} HTTP/1.1\r\nHost: cluster\r\n"
            f"Authorization: Bearer {self.args.rest_key}\r\n\r\n"
        ).encode()
        started = self.now()
        try:
            status, _ = await self.query_pool.exchange(raw, self.args.request_timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            status = 0
        self.queries.append((started, self.now() - started, status))

    async def paced(self, rate: float, count: int, make) -> None:
        tasks = []
        for i in range(count):
            delay = i / rate - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(make(i)))
        await asyncio.gather(*tasks)

    def first_target(self, i: int) -> str:
        every = self.args.direct_every
        if every and self.args.direct and i % every == every - 1:
            return f"direct{(i // every) % len(self.args.direct) + 1}"
        return "lb"

    async def run(self) -> dict[str, Any]:
        args = self.args
        count = int(args.seconds * args.webhook_rate) + args.preload
        stream = build_stream(Path(args.project_root), int(count / EVENTS_PER_CUSTOMER) + 64)
        self.customids = stream.customids
        self.stripe_customers = [c.id_for("cus_x") for c, _ in stream.people]
        self.events = [
            Event(body, json.loads(body)["id"], owner)
            for body, owner in zip(stream.bodies[:count], stream.owners, strict=False)
        ]
        if args.preload:  # queries-only runs: these customers exist before the clock starts
            self.start = time.monotonic()
            await self.closed(range(args.preload), 32, lambda i: self.deliver(i, "lb"))
            await self.drain(30.0)
        self.start = time.monotonic()
        start_epoch = time.time()
        if args.timed and not args.preload:
            self.add_timed(start_epoch)
            count = len(self.events)
        print(f"start {start_epoch}", flush=True)  # the caller times its faults from here
        if args.closed_connections:
            if args.queries_only:
                await self.closed(None, args.closed_connections, lambda i: self.query())
            else:
                todo = range(args.preload, count)
                await self.closed(todo, args.closed_connections, lambda i: self.deliver(i, "lb"))
            elapsed = self.now()
        else:
            jobs = [
                self.paced(
                    args.webhook_rate, count, lambda i: self.deliver(i, self.first_target(i))
                )
            ]
            if args.query_rate:
                jobs.append(
                    self.paced(
                        args.query_rate, int(args.seconds * args.query_rate), lambda i: self.query()
                    )
                )
            await asyncio.gather(*jobs)
            elapsed = self.now()
            await self.drain(args.seconds + args.drain_seconds - self.now())
        return self.report(elapsed)

    def add_timed(self, start_epoch: float) -> None:
        """The time-driven customers' webhooks, first in the schedule."""
        instants = [math.ceil(start_epoch + offset) for offset in self.args.timed]
        self.timed = timed.build(
            Path(self.args.project_root), instants, int(start_epoch), self.args.renewal_leeway
        )
        first = []
        for customer in self.timed:
            self.customids.append(customer.customid)
            self.stripe_customers.append("")  # none to link (read_your_writes skips them)
            event_id = json.loads(customer.body)["id"]
            first.append(Event(customer.body, event_id, len(self.customids) - 1))
        self.events = first + self.events

    async def closed(self, todo, connections: int, make) -> None:
        cursor = iter(todo) if todo is not None else None

        async def worker() -> None:
            while self.now() < self.args.seconds:
                if cursor is None:
                    await make(0)
                    continue
                i = next(cursor, None)
                if i is None:
                    return
                await make(i)

        await asyncio.gather(*(worker() for _ in range(connections)))

    async def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + max(0.0, seconds)
        while self.retrying and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for task in list(self.retrying):
            task.cancel()

    def report(self, elapsed: float) -> dict[str, Any]:
        return {
            "start_epoch": time.time() - self.now(),
            "elapsed": elapsed,
            "events": [[e.event_id, e.acked_at, e.attempts] for e in self.events if e.attempts],
            "attempts": self.attempts,
            "queries": self.queries,
            "customids": sorted({self.customids[o] for o in self.acked_owners}),
            # [customid, kind, instant, the entitlement it changes to] (clusterlib.timed)
            "timed": [customer.expected() for customer in self.timed],
            # (customid, its Stripe customer) of some customers written to
            "customers": [
                [self.customids[o], self.stripe_customers[o]]
                for o in sorted(set(self.acked_owners))
                if self.stripe_customers[o]
            ][:200],
        }


def main(argv: list[str]) -> None:
    raw = json.loads(Path(argv[0]).read_text())
    raw["target"] = tuple(raw["target"])
    raw["direct"] = [tuple(d) for d in raw.get("direct", [])]
    raw["retry_delays"] = tuple(raw.get("retry_delays", (1.0, 2.0, 4.0)))
    args = Args(**raw)
    result = asyncio.run(Client(args).run())
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
