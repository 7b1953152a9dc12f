"""W7, the renewal wave: webhooks and queries about the same customers at once, open loop.

1,000 customers live their lifecycles first (posted, then projected). Then Stripe sends
webhooks for random ones of them (a renewal wave: their invoices paid, their subscriptions
updated, each a new event) while their app asks about the same customers: 60% permissions now,
20% permissions `at` an instant of their lives, 10% `/v1/subscriber`, 10% a history page.
Arrivals are Poisson at the offered rates; latency counts from each request's due instant
(`benchlib/mixed_client.py`). The floor is the same queries alone, in the same run.

Visibility: probe customers (an active subscription each) get their subscription deleted by a
webhook while the load runs; the delay until "permissions now" shows it (-5) is measured.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
import time
from dataclasses import dataclass

from benchlib.events import Customer, Stream, Template, build_stream
from benchlib.loadgen import get_request, post_request, run_client, write_records
from benchlib.mixed_client import Request, Schedule
from benchlib.report import Row
from benchlib.servers import PROJECT_ROOT, SCRIPTS_DIR, engine_config, start_engine
from benchlib.workloads import API_KEY, APP_ID, SECRET, WEBHOOK_PATH, Bench, say

QUERY_MIX = (("now", 0.6), ("at", 0.2), ("subscriber", 0.1), ("history", 0.1))
RENEWALS = ("invoice.paid", "customer.subscription.updated")  # template names holding these
PROBE_LIFECYCLE = "2023-10-16 subscription, renewed"  # ends active: premium 5 until deleted
PROBE_MARKER = b'"entitlement":-5'
SEED = 7


@dataclass(frozen=True)
class W7Settings:
    customers: int = 1000
    webhook_rate: float = 300.0
    query_rate: float = 300.0
    probe_rate: float = 20.0  # ~400 probes in 20 s: a p99 that is not just the slowest one
    seconds: float = 20.0


def w7(bench: Bench, backend: str, settings: W7Settings) -> dict:
    """Queries alone, then the same queries with the renewal wave and the probes."""
    say(f"W7 {backend}: {settings.customers} customers' lifecycles, then the mixed load")
    probes = int(settings.probe_rate * settings.seconds) + 10
    load = build_stream(PROJECT_ROOT, settings.customers, tag="w7")
    probed = build_stream(PROJECT_ROOT, probes, tag="w7probe", only=[PROBE_LIFECYCLE])
    born = int(time.time())
    database = bench.fresh_database(backend, "engine_w7")
    config = engine_config(bench.work / f"w7-{backend}.toml", database, APP_ID, SECRET, API_KEY)
    with start_engine(config, bench.workers, bench.log(f"w7-{backend}")) as server:
        _post_all(bench, server, load, "w7-load")
        _post_all(bench, server, probed, "w7-probes")
        _wait_until_projected(server)
        rng = random.Random(SEED)
        queries = _queries(load, settings, born, rng)
        say(f"W7 {backend}: {settings.query_rate:.0f} queries/s alone")
        alone = _run(bench, server, Schedule(queries, settings.seconds), "alone")
        say(
            f"W7 {backend}: {settings.query_rate:.0f} queries/s with "
            f"{settings.webhook_rate:.0f} webhooks/s for the same customers"
        )
        mixed = sorted(
            queries + _renewals(load, settings, rng) + _probes(probed, settings, rng),
            key=lambda r: r.due,
        )
        together = _run(bench, server, Schedule(mixed, settings.seconds), "mixed")
    return {"settings": vars(settings), "alone": alone, "mixed": together}


def _post_all(bench: Bench, server, stream: Stream, name: str) -> None:
    signed = stream.signed(0, len(stream.bodies), SECRET)
    records = write_records(
        bench.work / f"{name}.records", (post_request(WEBHOOK_PATH, s, b) for s, b in signed)
    )
    # The asyncio client stops when the records run out (wrk would run its whole duration).
    result = run_client(server.base_url, records, 600, bench.connections, None, once=True)
    if result.non2xx or result.errors:
        raise SystemExit(f"W7: loading {name} failed: {result}")


def _wait_until_projected(server, timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        health = httpx.get(server.base_url + "/healthz", timeout=10).json()
        if all(p["lag"] == 0 for p in health.get("projections", {}).values()):
            return
        time.sleep(0.2)
    raise SystemExit("W7: the read model did not catch up")


def _arrivals(rate: float, seconds: float, rng: random.Random) -> list[float]:
    """Poisson arrival instants over `seconds`."""
    out, t = [], rng.expovariate(rate)
    while t < seconds:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def _queries(stream: Stream, settings: W7Settings, born: int, rng: random.Random) -> list:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    kinds = [k for k, _ in QUERY_MIX]
    weights = [w for _, w in QUERY_MIX]
    out = []
    for due in _arrivals(settings.query_rate, settings.seconds, rng):
        customid = rng.choice(stream.customids)
        kind = rng.choices(kinds, weights)[0]
        if kind == "now":
            path = f"/v1/permissions?customid={customid}"
        elif kind == "at":
            at = rng.randint(born - 3600, int(time.time()))
            path = f"/v1/permissions?customid={customid}&at={at}"
        elif kind == "subscriber":
            path = f"/v1/subscriber?customid={customid}"
        else:
            path = f"/v1/customers/{customid}/history?limit=50"
        out.append(Request(due, kind, get_request(path, headers)))
    return out


def _renewals(stream: Stream, settings: W7Settings, rng: random.Random) -> list[Request]:
    """New events about random customers of the load: their renewal-like templates again,
    each with a fresh event id, signed now (the run starts within Stripe's 300 s tolerance)."""
    from adapters.stripe.signature import sign

    now = int(time.time())
    out = []
    for due in _arrivals(settings.webhook_rate, settings.seconds, rng):
        customer, templates = rng.choice(stream.people)
        body = customer.render(rng.choice(_renewal_templates(templates)))
        out.append(
            Request(due, "webhook", post_request(WEBHOOK_PATH, sign(body, SECRET, now), body))
        )
    return out


def _renewal_templates(templates: list[Template]) -> list[Template]:
    return [t for t in templates if any(name in t.name for name in RENEWALS)] or templates


def _probes(stream: Stream, settings: W7Settings, rng: random.Random) -> list[Request]:
    """Each probe deletes one probe customer's subscription, then asks until it shows."""
    from adapters.stripe.signature import sign

    headers = {"Authorization": f"Bearer {API_KEY}"}
    now = int(time.time())
    dues = _arrivals(settings.probe_rate, settings.seconds, rng)
    out = []
    for due, (customer, templates) in zip(dues, stream.people, strict=False):
        # Stamped at or before it is sent (the run starts after `now`): an event that names an
        # instant still to come is, rightly, shown only once that instant has passed.
        body = _deleted(customer, templates, now + int(due))
        poll = get_request(f"/v1/permissions?customid={customer.customid}", headers)
        raw = post_request(WEBHOOK_PATH, sign(body, SECRET, now), body)
        out.append(Request(due, "probe", raw, poll, PROBE_MARKER))
    return out


def _deleted(customer: Customer, templates: list[Template], when: int) -> str:
    """The customer's subscription, deleted by request at `when` (a new event)."""
    updated = next(t for t in templates if "customer.subscription.updated" in t.name)
    event = json.loads(customer.render(updated))
    event["id"] = f"evt_{os.urandom(12).hex()}"
    event["type"] = "customer.subscription.deleted"
    event["created"] = when
    event["data"].pop("previous_attributes", None)
    subscription = event["data"]["object"]
    subscription.update(status="canceled", canceled_at=when, ended_at=when)
    subscription["cancel_at_period_end"] = False
    return json.dumps(event)


def _run(bench: Bench, server, schedule: Schedule, name: str) -> dict:
    path = bench.work / f"w7-{name}.schedule"
    path.write_bytes(pickle.dumps(schedule))
    argv = [sys.executable, "-m", "benchlib.mixed_client", str(server.port), str(path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPTS_DIR), str(PROJECT_ROOT)])}
    before = server.cpu_seconds()
    out = subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["server_cpu"] = (server.cpu_seconds() - before) / result["seconds"]
    return result


# --- Rows ----------------------------------------------------------------------------------------

QUERY_BAR_MS = 50.0
WEBHOOK_BAR_MS = 50.0
VISIBILITY_BAR_MS = 250.0


def w7_rows(backend: str, report: dict) -> list[Row]:
    alone, mixed = report["alone"]["kinds"], report["mixed"]["kinds"]
    rows = []
    for kind, _ in QUERY_MIX:
        a, m = alone.get(kind), mixed.get(kind)
        if a is None or m is None:
            continue
        met = m["p99_ms"] < QUERY_BAR_MS and m["p99_ms"] <= 3 * max(a["p99_ms"], 1e-9)
        rows.append(
            Row(
                "W7",
                backend,
                f"{kind} p99 ms (p50 {m['p50_ms']:.1f}, max {m['max_ms']:.0f})",
                m["p99_ms"],
                f"{kind} alone (p50 {a['p50_ms']:.1f})",
                a["p99_ms"],
                higher_is_better=False,
                bar="<50 ms & <=3x",
                meets=met,
                note=_status_note(m),
            )
        )
    hooks = mixed.get("webhook")
    if hooks:
        rows.append(
            Row(
                "W7",
                backend,
                f"webhook p99 ms (p50 {hooks['p50_ms']:.1f}, max {hooks['max_ms']:.0f})",
                hooks["p99_ms"],
                "none",
                None,
                higher_is_better=False,
                bar="<50 ms",
                meets=hooks["p99_ms"] < WEBHOOK_BAR_MS and not hooks["errors"],
                note=_status_note(hooks),
            )
        )
    seen = mixed.get("probe")
    if seen:
        rows.append(
            Row(
                "W7",
                backend,
                f"visibility p99 ms (p50 {seen['p50_ms']:.0f}, max {seen['max_ms']:.0f})",
                seen["p99_ms"],
                "none",
                None,
                higher_is_better=False,
                bar="<250 ms",
                meets=seen["p99_ms"] < VISIBILITY_BAR_MS,
                note=f"{seen['ok']} probes",
            )
        )
    return rows


def _status_note(summary: dict) -> str:
    bad = {k: v for k, v in summary["statuses"].items() if not k.startswith("2")}
    parts = [f"HTTP {k}: {v}" for k, v in bad.items()]
    if summary["errors"]:
        parts.append(f"socket errors {summary['errors']}")
    return ", ".join(parts)
