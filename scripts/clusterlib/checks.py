"""What a load run proves: figures from the load client's record, the database and the hosts."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from clusterlib import hosts, net


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def stored_counts(database_url: str) -> Counter[str]:
    """How many times each Stripe event id is recorded in the whole log (read, never written)."""
    from adapters.eventstore import open_event_log
    from domain.aggregates import Buyer

    log = open_event_log(database_url)
    counts: Counter[str] = Counter()
    try:
        start = 1
        while True:
            batch = log.recorder.select_notifications(start=start, limit=5000)
            if not batch:
                break
            for notification in batch:
                event = log.mapper.to_domain_event(notification)
                if isinstance(event, Buyer.StripeEventRecorded):
                    counts[event.stripe_event_id] += 1
            start = batch[-1].id + 1
    finally:
        log.close()
    return counts


def webhook_figures(result: dict[str, Any], stored: Counter[str]) -> dict[str, Any]:
    events = result["events"]
    sent = {e[0] for e in events}
    acked = {e[0] for e in events if e[1] is not None}
    attempts = result["attempts"]
    statuses = Counter(str(a[2]) for a in attempts)
    ok_ms = [a[1] * 1000 for a in attempts if 200 <= a[2] < 300]
    return {
        "events_sent": len(sent),
        "attempts": len(attempts),
        "statuses": dict(sorted(statuses.items())),  # "0": no answer (cut, reset, timed out)
        "acknowledged": len(acked),
        "stored": sum(1 for e in sent if stored[e] > 0),
        "lost": sorted(acked - {e for e in sent if stored[e] > 0}),
        "recorded_twice": sorted(e for e in sent if stored[e] > 1),
        "never_acknowledged": len(sent - acked),
        "stored_not_acknowledged": len({e for e in sent - acked if stored[e] > 0}),
        "retried_events": sum(1 for e in events if e[2] > 1),
        "ok_p50_ms": round(percentile(ok_ms, 50), 1),
        "ok_p99_ms": round(percentile(ok_ms, 99), 1),
        "ok_max_ms": round(max(ok_ms, default=0.0), 1),
        "last_ack_s": max((e[1] for e in events if e[1] is not None), default=None),
    }


def query_figures(result: dict[str, Any]) -> dict[str, Any]:
    queries = result["queries"]
    ms = [q[1] * 1000 for q in queries if q[2] == 200]
    return {
        "queries": len(queries),
        "statuses": dict(sorted(Counter(str(q[2]) for q in queries).items())),
        "ok_p50_ms": round(percentile(ms, 50), 1),
        "ok_p99_ms": round(percentile(ms, 99), 1),
        "ok_max_ms": round(max(ms, default=0.0), 1),
    }


def window(result: dict[str, Any], begin: float, end: float) -> dict[str, Any]:
    """Webhook attempts started between two wall-clock instants, by target."""
    t0 = result["start_epoch"]
    inside = [a for a in result["attempts"] if begin <= t0 + a[0] < end]
    by_target: dict[str, Any] = {}
    for target in sorted({a[3] for a in inside}):
        mine = [a for a in inside if a[3] == target]
        ms = [a[1] * 1000 for a in mine]
        not_ok = [a[1] * 1000 for a in mine if not 200 <= a[2] < 300]
        by_target[target] = {
            "attempts": len(mine),
            "statuses": dict(sorted(Counter(str(a[2]) for a in mine).items())),
            "p50_ms": round(percentile(ms, 50), 1),
            "max_ms": round(max(ms, default=0.0), 1),
            "not_2xx_max_ms": round(max(not_ok, default=0.0), 1),
        }
    return by_target


def timeline(result: dict[str, Any], step: float = 1.0) -> list[list[Any]]:
    """Per second: [t, 2xx, 503, other status, no answer, queries ok, queries not ok]."""
    rows: dict[int, list[int]] = {}
    for start, _, status, _, _ in result["attempts"]:
        row = rows.setdefault(int(start // step), [0] * 6)
        if 200 <= status < 300:
            row[0] += 1
        elif status == 503:
            row[1] += 1
        elif status:
            row[2] += 1
        else:
            row[3] += 1
    for start, _, status in result["queries"]:
        row = rows.setdefault(int(start // step), [0] * 6)
        row[4 if status == 200 else 5] += 1
    return [[t * step, *rows[t]] for t in sorted(rows)]


def answers(app_hosts: list[net.Host], customids: list[str]) -> dict[str, dict[str, bytes]]:
    """Each question asked of every host in turn, one right after the other (so that answers
    differ only if the hosts do, not because the log moved on between two rounds)."""

    def ask() -> dict[str, dict[str, bytes]]:
        import httpx

        found: dict[str, dict[str, bytes]] = {h.name: {} for h in app_hosts}
        headers = {"Authorization": f"Bearer {hosts.REST_KEY}"}
        clients = {
            h.name: httpx.Client(
                base_url=f"http://{h.address}:{hosts.ENGINE_PORT}", timeout=5, headers=headers
            )
            for h in app_hosts
        }
        try:
            for customid in customids:
                for path in ("/v1/permissions", "/v1/subscriber"):
                    for name, http in clients.items():
                        try:
                            response = http.get(path, params={"customid": customid})
                            ok = response.status_code == 200
                            body = response.content if ok else b""
                        except httpx.HTTPError:
                            body = b""
                        found[name][f"{path}?{customid}"] = body
        finally:
            for http in clients.values():
                http.close()
        return found

    return hosts.in_netns(net.SWITCH, ask)


def read_your_writes(customers: list[list[str]], count: int = 40) -> dict[str, Any]:
    """The app's own write, then its read, through the load balancer (so usually on two
    different hosts): link a new customid to a customer with `connect_stripe`, then at once ask
    `/v1/subscriber` about it; the answer must show the link."""

    def run() -> dict[str, Any]:
        import httpx

        seen, missing, write_ms = 0, [], []
        headers = {"Authorization": f"Bearer {hosts.REST_KEY}"}
        base = f"http://{net.LB.address}:{hosts.LB_PORT}"
        with httpx.Client(base_url=base, timeout=10, headers=headers) as http:
            for number, (_, customer) in enumerate(customers[:count]):
                customid = f"ryw_{time.time_ns()}_{number}"
                started = time.monotonic()
                linked = http.post(
                    "/v1/connect_stripe", json={"customid": customid, "customerid": customer}
                )
                write_ms.append((time.monotonic() - started) * 1000)
                answer = http.get("/v1/subscriber", params={"customid": customid})
                if linked.status_code == 200 and customer.encode() in answer.content:
                    seen += 1
                else:
                    missing.append([customid, linked.status_code, answer.status_code])
        return {
            "links": min(count, len(customers)),
            "seen_at_once": seen,
            "missing": missing[:5],
            "connect_p50_ms": round(percentile(write_ms, 50), 1),
            "connect_max_ms": round(max(write_ms, default=0.0), 1),
        }

    return hosts.in_netns(net.SWITCH, run)


def normalised(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def agreement(
    app_hosts: list[net.Host], customids: list[str], within: float = 1.0, give_up: float = 10.0
) -> dict[str, Any]:
    """Ask every host the same questions until they all answer alike (each answer a 200);
    how long that took from the first look, and what still differed after `within`."""
    start = time.monotonic()
    first_differences = None
    while True:
        look = time.monotonic() - start
        seen = answers(app_hosts, customids)
        keys = next(iter(seen.values())).keys()
        differing = [
            k
            for k in keys
            if len({json.dumps(normalised(seen[h][k]), sort_keys=True) for h in seen}) > 1
            or any(not seen[h][k] for h in seen)
        ]
        if first_differences is None:
            first_differences = len(differing)
        elapsed = time.monotonic() - start
        if not differing or elapsed > give_up:
            return {
                "hosts": [h.name for h in app_hosts],
                "questions": len(keys),
                "differing_at_first_look": first_differences,
                "agreed": not differing,
                # from the first look to the start of the look where all answers agreed
                "seconds_to_agree": round(look, 2) if not differing else None,
                "look_seconds": round(elapsed - look, 2),
                "within_1s": not differing and look <= within,
                "example": differing[:3],
            }
        time.sleep(0.1)


def memory(samples: list[dict[str, Any]], begin: float, end: float) -> dict[str, Any]:
    """Peak RSS (MB) of each engine host before `begin` and between `begin` and `end`."""
    before: dict[str, float] = {}
    during: dict[str, float] = {}
    for sample in samples:
        into = before if sample["t"] < begin else during if sample["t"] < end else None
        if into is None:
            continue
        for name, mb in sample["rss_mb"].items():
            into[name] = max(into.get(name, 0.0), mb)
    return {"peak_mb_before": before, "peak_mb_during": during}


def balancer_changes(samples: list[dict[str, Any]], since: float) -> list[list[Any]]:
    """[seconds after `since`, host, status] each time HAProxy's view of a host changed."""
    changes, last = [], {}
    for sample in samples:
        for name, status in sample["lb"].items():
            state = status.split()[0] if status else status
            if last.get(name) != state:
                if name in last:
                    changes.append([round(sample["t"] - since, 2), name, state])
                last[name] = state
    return changes
