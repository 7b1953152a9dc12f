"""Audit: a customer's full history, entitlements at any past instant and as known then, and
tamper-evident exports, through the whole engine, on SQLite and PostgreSQL.

Receipt times are controlled by the ingestor's clock (`engine.ingestor.clock`), Stripe's clock by
the bodies. Receipt times are set in the near future so that the catalogue, recorded now by the
wall clock, was already known when every event arrived.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from adapters.bootstrap import Engine
from adapters.cli.main import main
from adapters.usecases.audit import (
    GENESIS,
    app_records,
    customer_records,
    event_record,
    line_hash,
    verify_file,
    write_chain,
)
from adapters.usecases.history import _runs as history_runs
from projections.history import HistoryRow
from tests.conftest import API_KEYS, FIXTURES, SECRETS, post_webhook, settle
from tests.lifecycles import CATALOGUE, DAY, T0, event, invoice, subscription

AUTH = {"Authorization": f"Bearer {API_KEYS['demo']}"}
OTHER_AUTH = {"Authorization": f"Bearer {API_KEYS['other']}"}
R0 = time.time() + 3600.0  # receipt clock origin: after the catalogue is recorded
CUSTOMER = "cus_audit"
CUSTOMID = f"user_{CUSTOMER}"  # lifecycles' subscriptions claim it in their metadata
SUB = f"sub_{CUSTOMER}_0"


def deliver_at(client: TestClient, engine: Engine, received_at: float, raw: str, app="demo"):
    engine.ingestor.clock = lambda: received_at
    response = post_webhook(client, raw, app_id=app)
    assert response.status_code == 200, response.text
    settle(engine)


def put_catalogue(client: TestClient, doc: dict[str, Any] = CATALOGUE) -> None:
    response = client.put("/v1/catalogue", json=doc, headers=AUTH)
    assert response.status_code == 200, response.text


def history(client: TestClient, customid: str = CUSTOMID, auth=AUTH, **params) -> Any:
    return client.get(f"/v1/customers/{customid}/history", params=params, headers=auth)


def all_pages(client: TestClient, **params) -> list[dict[str, Any]]:
    events, cursor = [], None
    while True:
        page = history(client, **params, **({"cursor": cursor} if cursor else {}))
        assert page.status_code == 200, page.text
        events += page.json()["events"]
        cursor = page.json()["nextCursor"]
        if cursor is None:
            return events


def sub_event(n: int, kind: str, created: int, status: str, product: str = "prod_basic") -> str:
    obj = subscription(0, CUSTOMER, status, product, T0)
    if status == "canceled":
        obj.update(canceled_at=created, ended_at=created)
    return event(f"evt_audit_{n}", kind, created, obj)


# --- History ---------------------------------------------------------------------------------


def odd_body() -> str:
    """A body as a person might not expect it: indented, non-ASCII, trailing newline."""
    body = json.loads(sub_event(1, "customer.subscription.created", T0, "active"))
    body["data"]["object"]["description"] = "Zo\u00eb\u2019s plan ✓ — \u2028 line"
    return json.dumps(body, indent=3, ensure_ascii=False) + "\n"


def test_history_is_what_was_ingested_in_order_with_raw_bodies_unchanged(client, engine) -> None:
    first = odd_body()
    paid = event(
        "evt_audit_paid", "invoice.paid", T0, invoice(0, CUSTOMER, SUB, "prod_basic", T0, True)
    )
    unknown = event("evt_audit_tax", "customer.tax_id.created", T0 + 5, {"customer": CUSTOMER})
    deliver_at(client, engine, R0 + 1, first)
    deliver_at(client, engine, R0 + 2, paid)
    deliver_at(client, engine, R0 + 3, unknown)
    other = event(
        "evt_other",
        "customer.subscription.created",
        T0,
        subscription(0, "cus_x", "active", "p", T0),
    )
    deliver_at(client, engine, R0 + 4, other)  # another customer: not in this history

    events = all_pages(client, include="raw")

    assert [e["eventType"] for e in events] == [
        "Created",
        "SubscriptionChanged",
        "InvoicePaid",
        "OtherStripeEvent",
    ]
    stripe = events[1:]
    assert [e["raw"] for e in stripe] == [first, paid, unknown]
    assert [e["stripeEventId"] for e in stripe] == [
        "evt_audit_1",
        "evt_audit_paid",
        "evt_audit_tax",
    ]
    assert [e["recordedAt"] for e in stripe] == [R0 + 1, R0 + 2, R0 + 3]
    assert [e["stripeCreated"] for e in stripe] == [T0, T0, T0 + 5]
    assert all(e["apiVersion"] == "2022-11-15" for e in stripe)
    assert stripe[0]["stripeType"] == "customer.subscription.created"
    assert stripe[0]["facts"][0]["kind"] == "subscription"
    assert stripe[2]["facts"] == []  # recorded, not acted on
    positions = [e["position"] for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert "raw" not in history(client).json()["events"][1]


def test_real_payloads_come_back_byte_identical(client, engine) -> None:
    names = [
        "2023-10-16__customer.subscription.created__alimehndi__1.json",
        "2023-10-16__invoice.paid__alimehndi__1.json",
    ]
    bodies = [(FIXTURES / "events-newer" / n).read_bytes() for n in names]
    for body in bodies:
        assert post_webhook(client, body).status_code == 200
    assert client.post(
        "/v1/connect_stripe",
        json={"customid": "ali", "customerid": "cus_Q1b0Yi7UkcAh2A"},
        headers=AUTH,
    ).status_code in (200, 201)
    page = history(client, "ali", include="raw").json()["events"]
    raws = [e["raw"].encode() for e in page if e["stripeEventId"]]
    assert raws == bodies
    assert page[-1]["eventType"] == "CustomidLinked" and page[-1]["customid"] == "ali"


def test_another_apps_key_sees_nothing_and_unknown_customers_are_404(client, engine) -> None:
    deliver_at(client, engine, R0, sub_event(1, "customer.subscription.created", T0, "active"))
    for response in (history(client, auth=OTHER_AUTH), history(client, "nobody")):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == 1001
    assert history(client, auth={}).status_code == 401


def test_links_and_transfers_are_in_the_history_of_the_customer_who_has_the_buyer(
    client, engine
) -> None:
    deliver_at(client, engine, R0, sub_event(1, "customer.subscription.created", T0, "active"))
    for customid in ("alice", "bob"):
        response = client.post(
            "/v1/connect_stripe", json={"customid": customid, "customerid": CUSTOMER}, headers=AUTH
        )
        assert response.status_code < 300, response.text
    links = [e for e in all_pages(client, customid="bob") if e["eventType"] == "CustomidLinked"]
    assert [(e["customid"], e["previousCustomid"]) for e in links] == [
        ("alice", CUSTOMID),
        ("bob", "alice"),
    ]
    assert history(client, "alice").status_code == 404  # the buyer moved, with its history


def test_the_history_of_several_buyers_interleaves_by_log_position(client, engine) -> None:
    for n, customer in enumerate(["cus_a", "cus_b", "cus_a", "cus_b", "cus_a"]):
        obj = subscription(0, customer, "active", "prod_basic", T0)
        obj["metadata"] = {"customid": "both"}
        deliver_at(
            client,
            engine,
            R0 + n,
            event(f"evt_mix_{n}", "customer.subscription.updated", T0 + n, obj),
        )
    stripe = [e for e in all_pages(client, customid="both", limit=2) if e["stripeEventId"]]
    assert [e["stripeEventId"] for e in stripe] == [f"evt_mix_{n}" for n in range(5)]
    assert [e["buyerKey"] for e in stripe] == ["cus_a", "cus_b", "cus_a", "cus_b", "cus_a"]
    typed = all_pages(client, customid="both", type="customer.subscription.updated", limit=4)
    assert [e["stripeEventId"] for e in typed] == [f"evt_mix_{n}" for n in range(5)]


def many_events(client: TestClient, engine: Engine, count: int) -> list[str]:
    bodies = []
    for n in range(count):
        kind = "customer.subscription.updated" if n % 2 else "invoice.paid"
        obj = (
            subscription(0, CUSTOMER, "active", "prod_basic", T0)
            if n % 2
            else invoice(n, CUSTOMER, SUB, "prod_basic", T0, True)
        )
        bodies.append(event(f"evt_many_{n}", kind, T0 + n * DAY, obj))
    for n, body in enumerate(reversed(bodies)):  # Stripe's clock runs backwards here
        deliver_at(client, engine, R0 + n, body)
    return bodies


def test_pages_concatenate_to_the_whole_history(client, engine) -> None:
    many_events(client, engine, 7)
    whole = history(client, limit=1000).json()
    assert whole["nextCursor"] is None and len(whole["events"]) == 8
    paged = all_pages(client, limit=3)
    assert paged == whole["events"]
    first = history(client, limit=3).json()
    assert len(first["events"]) == 3 and first["nextCursor"]


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "1001"}, {"limit": "x"}, {"cursor": "nonsense"}, {"since": "x"}],
)
def test_bad_paging_parameters_are_400_1010(client, engine, params) -> None:
    many_events(client, engine, 1)
    response = history(client, **params)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == 1010


def test_filters_by_stripe_created_and_type(client, engine) -> None:
    many_events(client, engine, 6)  # created T0 + n days, n = 0..5
    since, until = T0 + 2 * DAY, "2025-10-13T08:53:20Z"  # T0 + 4 days, as ISO 8601
    within = all_pages(client, since=str(since), until=until, limit=2)
    assert [e["stripeEventId"] for e in within] == ["evt_many_4", "evt_many_3", "evt_many_2"]
    typed = all_pages(client, type=["invoice.paid"])
    assert {e["stripeType"] for e in typed} == {"invoice.paid"} and len(typed) == 3
    both = all_pages(client, type=["invoice.paid", "customer.subscription.updated"])
    assert len(both) == 6
    registered = all_pages(client, type="entitlements.buyer.registered")
    assert [e["eventType"] for e in registered] == ["Created"]


# --- Point in time: `at` and `known_at` ---------------------------------------------------------


def permission(client: TestClient, at: int, known_at: float | None = None, name="access") -> dict:
    params = {"customid": CUSTOMID, "at": str(at), "explain": "1"}
    if known_at is not None:
        params["known_at"] = str(known_at)
    response = client.get("/v1/permissions", params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    return {p["permissionId"]: p for p in response.json()["all"]}[name]


def test_at_and_known_at_on_a_timeline_with_late_arrivals(client, engine) -> None:
    """Stripe's clock: basic from T0, upgraded to pro at T0+2d, canceled at T0+10d.
    Arrival: the upgrade first (R0+50), the start late (R0+100), the cancellation last (R0+200)."""
    put_catalogue(client)
    start = sub_event(1, "customer.subscription.created", T0, "active")
    upgrade = sub_event(2, "customer.subscription.updated", T0 + 2 * DAY, "active", "prod_pro")
    cancel = sub_event(3, "customer.subscription.deleted", T0 + 10 * DAY, "canceled", "prod_pro")
    deliver_at(client, engine, R0 + 50, upgrade)
    deliver_at(client, engine, R0 + 100, start)
    deliver_at(client, engine, R0 + 200, cancel)

    def code(at: int, known_at: float | None, name: str = "access") -> int:
        return permission(client, at, known_at, name)["entitlement"]

    # Nothing known yet: never bought, whatever the instant.
    assert code(T0 + 3 * DAY, R0 + 10) == -9
    # Only the upgrade known: nothing before it happened; pro from then on.
    assert code(T0 + DAY, R0 + 60) == -9
    assert (code(T0 + 3 * DAY, R0 + 60), code(T0 + 3 * DAY, R0 + 60, "pro")) == (5, 5)
    # The late start arrives: basic from T0, still no pro on day 1.
    assert (code(T0 + DAY, R0 + 150), code(T0 + DAY, R0 + 150, "pro")) == (5, -9)
    # Before the cancellation arrived the engine believed day 11 was still paid for ...
    assert code(T0 + 11 * DAY, R0 + 150) == 5
    assert permission(client, T0 + 11 * DAY, R0 + 150)["expireDate"] == T0 + 30 * DAY
    # ... as it learned later, it was not; and the past before the cancellation is unchanged.
    assert code(T0 + 11 * DAY, R0 + 200) == code(T0 + 11 * DAY, None) == -5
    assert code(T0 + 3 * DAY, None) == code(T0 + 3 * DAY, R0 + 60) == 5
    why = permission(client, T0 + 11 * DAY, None)["explain"]
    assert "evt_audit_3" in why["eventIds"]


def test_known_at_uses_the_catalogue_as_it_was_then(client, engine) -> None:
    put_catalogue(client)
    time.sleep(0.05)
    then = time.time()
    time.sleep(0.05)
    narrowed = json.loads(json.dumps(CATALOGUE))
    narrowed["permissions"][0]["skuIds"] = ["pro", "pass"]  # basic no longer grants access
    put_catalogue(client, narrowed)
    deliver_at(
        client, engine, then - 0.02, sub_event(1, "customer.subscription.created", T0, "active")
    )

    assert permission(client, T0 + DAY, then)["entitlement"] == 5
    assert permission(client, T0 + DAY)["entitlement"] == -9
    assert permission(client, T0 + DAY, time.time())["entitlement"] == -9


# --- Export and verify --------------------------------------------------------------------------


def export_customer(engine: Engine, path: Path) -> tuple[int, str]:
    records = (event_record(r) for r in customer_records(engine.history, "demo", CUSTOMID))
    with path.open("w", encoding="utf-8", newline="\n") as out:
        return write_chain(records, out)


def test_an_export_verifies_and_carries_raw_bodies(client, engine, tmp_path) -> None:
    bodies = many_events(client, engine, 4)
    path = tmp_path / "audit.jsonl"
    count, last = export_customer(engine, path)
    verdict = verify_file(str(path))
    assert (verdict.ok, verdict.count, verdict.last_hash) == (True, 5, last)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["prev"] == GENESIS and lines[-1]["end"] and lines[-1]["count"] == count == 5
    assert [line["data"]["raw"] for line in lines[1:-1]] == list(reversed(bodies))
    assert all(line_hash(line) == line["hash"] for line in lines)


def tampered(lines: list[str], how: str, i: int) -> list[str]:
    out = list(lines)
    if how == "change":
        obj = json.loads(out[i])
        if "data" in obj:
            obj["data"]["stripe_type" if "stripe_type" in obj["data"] else "app_id"] = "forged"
        else:  # the final line
            obj["count"] -= 1
        out[i] = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    elif how == "remove":
        del out[i]
    elif how == "reorder":
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


@pytest.mark.parametrize("how", ["change", "remove", "reorder"])
def test_changing_removing_or_reordering_any_line_breaks_the_chain_there(
    client, engine, tmp_path, how
) -> None:
    many_events(client, engine, 3)
    path = tmp_path / "audit.jsonl"
    export_customer(engine, path)
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    last = len(lines) - 1 if how == "reorder" else len(lines)
    for i in range(last):
        broken = tmp_path / f"broken_{i}.jsonl"
        broken.write_text("\n".join(tampered(lines, how, i)) + "\n", encoding="utf-8")
        verdict = verify_file(str(broken))
        assert (verdict.ok, verdict.broken_line) == (False, i + 1), (how, i, verdict)


def test_a_forger_who_rehashes_a_line_is_caught_at_the_next_one(tmp_path) -> None:
    path = tmp_path / "chain.jsonl"
    with path.open("w", encoding="utf-8") as out:
        write_chain(({"n": n} for n in range(3)), out)
    lines = path.read_text().splitlines()
    forged = json.loads(lines[1])
    forged["n"] = 99
    forged["hash"] = line_hash(forged)
    lines[1] = json.dumps(forged)
    path.write_text("\n".join(lines) + "\n")
    assert verify_file(str(path)).broken_line == 3
    path.write_text("\n".join(lines[:2]) + "\n")  # truncated: the final line is missing
    assert verify_file(str(path)).broken_line == 3


def test_an_app_export_holds_its_buyers_and_catalogue_and_nothing_of_other_apps(
    client, engine
) -> None:
    put_catalogue(client)
    many_events(client, engine, 2)
    other = event(
        "evt_o", "customer.subscription.created", T0, subscription(0, "cus_o", "active", "p", T0)
    )
    deliver_at(client, engine, R0, other, app="other")
    records = list(app_records(engine.log, engine.follower, "demo"))
    topics = [type(r.event).TOPIC for r in records]
    assert topics.count("entitlements.app_catalogue.replaced") == 1
    stripe_ids = [getattr(r.event, "stripe_event_id", None) for r in records]
    assert "evt_o" not in stripe_ids and {"evt_many_0", "evt_many_1"} <= set(stripe_ids)
    positions = [r.position for r in records]
    assert positions == sorted(positions)


# --- The command line ---------------------------------------------------------------------------


def write_config(tmp_path: Path, database_url: str) -> Path:
    lines = [f'[database]\nurl = "{database_url}"\n']
    for app_id in SECRETS:
        lines.append(
            f'[apps.{app_id}]\nwebhook_secrets = ["{SECRETS[app_id]}"]\n'
            f'rest_api_keys = ["{API_KEYS[app_id]}"]\n'
        )
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines))
    return path


def test_cli_history_permissions_export_and_verify(client, engine, database_url, tmp_path) -> None:
    put_catalogue(client)
    deliver_at(client, engine, R0, sub_event(1, "customer.subscription.created", T0, "active"))
    env = {"ENTITLEMENTS_CONFIG": str(write_config(tmp_path, database_url))}
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    shown = run("history", CUSTOMID, "--app", "demo", "--json", "--raw")
    assert shown.exit_code == 0, shown.output
    assert [json.loads(line)["stripeEventId"] for line in shown.output.splitlines()] == [
        None,
        "evt_audit_1",
    ]
    assert "customer.subscription.created" in run("history", CUSTOMID).output
    assert run("history", "nobody").exit_code == 1

    perms = run("permissions", CUSTOMID, "--at", str(T0 + DAY), "--explain", "--json")
    assert json.loads(perms.output)["all"][0]["explain"]["eventIds"] == ["evt_audit_1"]
    table = run("permissions", CUSTOMID, "--at", str(T0 + DAY), "--known-at", str(R0 - 1))
    assert "access" in table.output and "-9" in table.output

    out = tmp_path / "app.jsonl"
    exported = run("audit", "export", "--app", "demo", "--out", str(out))
    assert exported.exit_code == 0, exported.output
    ok = run("audit", "verify", str(out))
    assert ok.exit_code == 0 and ok.output.startswith("OK: 4 events")  # catalogue x2, buyer x2
    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text("\n".join([lines[0], *lines[2:]]) + "\n", encoding="utf-8")
    broken = runner.invoke(main, ["audit", "verify", str(out)], env=env)
    assert broken.exit_code == 1 and "line 2" in broken.output


def test_a_page_is_read_from_the_log_in_runs_of_at_most_25_nearby_versions():
    """A page of 100 consecutive events is 4 reads (one read of ~450 KB stalled over TCP now and
    then); gaps of up to 8 versions are read through, longer ones start another read."""
    page = [HistoryRow(v, "u", v, "cus_1") for v in range(1, 101)]
    assert list(history_runs(page)) == [("u", 1, 25), ("u", 26, 50), ("u", 51, 75), ("u", 76, 100)]
    sparse = [HistoryRow(v, "u", v, "cus_1") for v in (1, 9, 18, 30)]
    assert list(history_runs(sparse)) == [("u", 1, 9), ("u", 18, 18), ("u", 30, 30)]
