"""What a load run proves: figures from the load client's record, the database and the hosts."""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from clusterlib import hosts, net


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def read_log(database_url: str) -> tuple[Counter[str], list[dict[str, Any]]]:
    """The whole log, read once (never written): how many times each Stripe event id is
    recorded, and every change announced (`ChangeLog.PermissionsChanged`, in log order)."""
    from adapters.storage.eventstore import open_event_log
    from domain.aggregates import Buyer
    from domain.announcements import ChangeLog

    log = open_event_log(database_url)
    counts: Counter[str] = Counter()
    changes: list[dict[str, Any]] = []
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
                elif isinstance(event, ChangeLog.PermissionsChanged):
                    data = json.loads(event.body)["data"]
                    changes.append(
                        {
                            "id": event.change_id,
                            "app": event.app_id,
                            "customid": event.customid,
                            "sequence": event.originator_version,
                            "cause": data["cause"]["kind"],
                            "to": [c["to"]["entitlement"] for c in data["changes"]],
                            "sha256": hashlib.sha256(event.body.encode()).hexdigest(),
                        }
                    )
            start = batch[-1].id + 1
    finally:
        log.close()
    return counts, changes


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


# --- Outbound webhooks and time-driven changes ------------------------------------------------


def received(path: Path) -> list[dict[str, Any]]:
    """The receiver's record, in the order the POSTs came (one process appends each line)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def outbound_settled(
    sql, record: Path, timed: list[list[Any]], timeout: float = 90.0
) -> dict[str, Any]:
    """Wait until every time-driven instant has passed and its change is recorded, every change
    is on the event log, no delivery waits, and the receiver has had each change at least
    once; or `timeout`. `sql` runs a statement on the primary."""
    start = time.monotonic()
    last_instant = max((at for _, _, at, _ in timed), default=0)
    customids = [customid for customid, *_ in timed]
    state: dict[str, Any] = {}
    while True:
        try:
            unappended = sql("SELECT count(*) FROM permission_changes WHERE appended = 0")
            waiting = sql("SELECT count(*) FROM deliveries WHERE status IN ('pending', 'failed')")
            delivered = {
                r[0] for r in sql("SELECT change_id FROM deliveries WHERE status = 'delivered'")
            }
            timed_done = sql(
                "SELECT count(*) FROM permission_changes WHERE customid = ANY(%s) "
                "AND sequence >= 2",
                (customids,),
            )
            unappended, waiting, timed_done = unappended[0][0], waiting[0][0], timed_done[0][0]
            state = {
                "unappended": unappended,
                "waiting": waiting,
                "timed_changed": timed_done,
            }
            heard = {r.get("id") for r in received(record)}
            done = (
                time.time() > last_instant + 1
                and unappended == 0
                and waiting == 0
                and timed_done >= len(timed)
                and delivered <= heard
            )
        except Exception as error:  # the database not back yet: not settled
            state, done = {"error": repr(error)[:200]}, False
        elapsed = time.monotonic() - start
        if done or elapsed > timeout:
            return {"settled": done, "waited_s": round(elapsed, 2), **state}
        time.sleep(0.5)


def outbound_figures(
    changes: list[dict[str, Any]],
    got: list[dict[str, Any]],
    timed: list[list[Any]],
    delivery_statuses: dict[str, int],
) -> dict[str, Any]:
    """The change log against what the receiver got: each change delivered at least once
    (lost: on the log, never received), duplicates, order per customid, bodies as logged; and
    each time-driven change recorded once on the log and delivered."""
    on_log = {c["id"]: c for c in changes}
    verified = [r for r in got if r.get("verified") and r.get("id")]
    counts = Counter(r["id"] for r in verified)
    first_at: dict[str, float] = {}
    firsts: dict[str, list[int]] = {}  # per customid, the sequences in order of first arrival
    differing, resent_after, resent_from = [], [], Counter()
    for r in verified:
        if r["id"] not in first_at:
            first_at[r["id"]] = r["t"]
            firsts.setdefault(r["customid"], []).append(r["sequence"])
        else:
            resent_after.append(r["t"] - first_at[r["id"]])
            resent_from[str(r.get("from"))] += 1
        logged = on_log.get(r["id"])
        if logged is not None and logged["sha256"] != r["sha256"]:
            differing.append(r["id"])
    out_of_order = sorted(
        customid
        for customid, seqs in firsts.items()
        if seqs != sorted(seqs) or len(set(seqs)) != len(seqs)
    )
    by_customid: dict[str, list[dict[str, Any]]] = {}
    for change in changes:
        by_customid.setdefault(change["customid"], []).append(change)
    gaps = sorted(
        customid
        for customid, mine in by_customid.items()
        if sorted(c["sequence"] for c in mine) != list(range(1, len(mine) + 1))
    )
    timed_rows, late = [], []
    for customid, kind, at, to in timed:
        by_time = [c for c in by_customid.get(customid, []) if c["cause"] == "time"]
        row = {
            "customid": customid,
            "kind": kind,
            "at": at,
            "recorded": len(by_time),
            "right_code": all(to in c["to"] for c in by_time) and bool(by_time),
            "delivered": sum(counts[c["id"]] for c in by_time),
        }
        if by_time and by_time[0]["id"] in first_at:
            row["delivered_after_s"] = round(first_at[by_time[0]["id"]] - at, 2)
            late.append(row["delivered_after_s"])
        timed_rows.append(row)
    timed_ids = {customid for customid, *_ in timed}
    return {
        "endpoint_changes": len(on_log),
        "deliveries": delivery_statuses,
        "posts_received": len(got),
        "bad_signatures": len(got) - len(verified),
        "received_once_or_more": sum(1 for i in on_log if counts[i]),
        "duplicates": sum(n - 1 for n in counts.values()),
        "changes_received_twice_or_more": sum(1 for n in counts.values() if n > 1),
        # seconds from a change's first arrival to each later one (a lease run out: 10 + 5 s)
        "resent_from": dict(sorted(resent_from.items())),  # the hosts that sent them again
        "resent_after_s": [
            round(min(resent_after, default=0), 2),
            round(max(resent_after, default=0), 2),
        ],
        "lost": sorted(set(on_log) - set(counts)),
        "not_on_log": sorted(set(counts) - set(on_log)),
        "bodies_differing": differing[:5],
        "out_of_order": out_of_order[:5],
        "sequence_gaps": gaps[:5],
        "causes": dict(sorted(Counter(c["cause"] for c in changes).items())),
        "time_changes_of_others": sum(
            1 for c in changes if c["cause"] == "time" and c["customid"] not in timed_ids
        ),
        "timed": {
            "expected": len(timed),
            "recorded_once": sum(1 for r in timed_rows if r["recorded"] == 1 and r["right_code"]),
            "recorded_twice_or_more": sum(1 for r in timed_rows if r["recorded"] > 1),
            "not_recorded": sum(1 for r in timed_rows if r["recorded"] == 0),
            "delivered": sum(1 for r in timed_rows if r["delivered"] >= 1),
            "delivered_after_instant_s": {
                "p50": percentile(late, 50),
                "max": max(late, default=None),
            },
            "customers": timed_rows,
        },
    }


def outbound_failures(figures: dict[str, Any], wait: dict[str, Any], faulted: bool) -> list[str]:
    """What `outbound_figures` says went wrong: a change never delivered, a delivery of no
    change, a body not as logged, out of order, a bad signature, a duplicate with no fault to
    explain it (at least once: twice only across a crash), a time-driven change not recorded
    exactly once or not delivered."""
    failures = []
    if not wait["settled"]:
        failures.append(f"outbound deliveries not settled after {wait['waited_s']} s: {wait}")
    if figures["lost"]:
        failures.append(f"{len(figures['lost'])} changes on the change log never delivered")
    for key in ("not_on_log", "bodies_differing", "out_of_order", "sequence_gaps"):
        if figures[key]:
            failures.append(f"outbound {key}: {figures[key][:3]}")
    if figures["bad_signatures"]:
        failures.append(f"{figures['bad_signatures']} outbound POSTs with a bad signature")
    if figures["duplicates"] and not faulted:
        failures.append(f"{figures['duplicates']} outbound duplicates with no fault")
    timed = figures["timed"]
    if not timed["expected"] == timed["recorded_once"] == timed["delivered"]:
        failures.append(
            f"time-driven changes: {timed['expected']} expected, {timed['recorded_once']} "
            f"recorded once, {timed['delivered']} delivered"
        )
    return failures
