"""Reconcile: each customid's permissions compared with what Stripe's objects say now; `--fix`
records the observations that settle the differences. Against the recorded Stripe API; on
SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from adapters import cli
from adapters.reconcile import RECONCILE, Reconciler
from adapters.stripe import listing
from adapters.stripe.listing import StripeAccessError, StripeLister
from domain.aggregates import Buyer, buyer_id
from domain.catalogue import Catalogue
from domain.rules import Entitlement
from tests.conftest import ingest, settle
from tests.lifecycles import CATALOGUE, DAY, T0, event, population, subscription
from tests.recorded_stripe import KEY, RecordedStripe, running

NOW = T0 + 5 * DAY
PATHS = {
    "customer": "/v1/customers",
    "subscription": "/v1/subscriptions",
    "invoice": "/v1/invoices",
    "payment_intent": "/v1/payment_intents",
    "charge": "/v1/charges",
    "refund": "/v1/refunds",
    "dispute": "/v1/disputes",
    "credit_note": "/v1/credit_notes",
    "checkout.session": "/v1/checkout/sessions",
}


@pytest.fixture
def stripe_api() -> Iterator[RecordedStripe]:
    yield from running()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "FIRST_BACKOFF", 0.01)


@pytest.fixture
def catalogued(engine: Any) -> Any:
    engine.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
    return engine


def reconciler(engine: Any, api: RecordedStripe, now: float = NOW) -> Reconciler:
    lister = StripeLister(KEY, api.url, max_per_second=1000)
    return Reconciler(engine, lister, "demo", clock=lambda: float(now))


def code(engine: Any, customid: str, permission: str, at: int = NOW) -> int:
    settle(engine)
    found = engine.entitlements.permissions("demo", customid, at)
    return next(p.entitlement for p in found if p.permission_id == permission)


def heard_active_then_canceled_without_webhook(engine: Any, api: RecordedStripe) -> dict:
    """The engine heard the subscription start; Stripe canceled it and no webhook came."""
    active = subscription(0, "cus_a", "active", "prod_pro", T0)
    ingest(engine, [event("evt_created", "customer.subscription.created", T0, active)])
    canceled = {**active, "status": "canceled", "canceled_at": NOW - 60, "ended_at": NOW - 60}
    api.add_object("/v1/subscriptions", canceled)
    return canceled


def test_a_cancellation_no_webhook_brought_is_found_and_nothing_is_written(catalogued, stripe_api):
    canceled = heard_active_then_canceled_without_webhook(catalogued, stripe_api)
    settle(catalogued)
    before = catalogued.log.recorder.max_notification_id()
    report = reconciler(catalogued, stripe_api).run()
    assert catalogued.log.recorder.max_notification_id() == before
    assert (report.customids, report.recorded) == (1, 0)
    found = {d.permission_id: d for d in report.differences}
    assert set(found) == {"access", "pro"}
    pro = found["pro"]
    assert (pro.customid, pro.engine_code) == ("user_cus_a", Entitlement.AUTO_RENEW_ON)
    assert pro.stripe_code == Entitlement.EXPIRED_VOLUNTARY
    assert canceled["id"] in pro.object_ids
    assert pro.stripe_state == f"{canceled['id']} canceled"
    assert report.remaining == report.differences


def test_fix_records_the_observation_that_settles_it_and_says_where_it_came_from(
    catalogued, stripe_api
):
    canceled = heard_active_then_canceled_without_webhook(catalogued, stripe_api)
    report = reconciler(catalogued, stripe_api).run(fix=True)
    assert (report.recorded, report.remaining) == (1, [])
    assert len(report.differences) == 2
    assert code(catalogued, "user_cus_a", "pro") == Entitlement.EXPIRED_VOLUNTARY
    (observed,) = [
        e for e in catalogued.log.history(buyer_id("demo", "cus_a"))
        if isinstance(e, Buyer.StripeObjectObserved)
    ]  # fmt: skip
    assert (observed.command, observed.object_id) == (RECONCILE, canceled["id"])
    assert observed.observed_at == float(NOW)
    again = reconciler(catalogued, stripe_api, NOW + 60).run(fix=True)
    assert (again.differences, again.recorded) == ([], 0)


def test_a_subscriber_the_engine_never_heard_of_is_a_difference(catalogued, stripe_api):
    stripe_api.add_object("/v1/subscriptions", subscription(0, "cus_b", "active", "prod_pro", T0))
    report = reconciler(catalogued, stripe_api).run()
    pro = next(d for d in report.differences if d.permission_id == "pro")
    assert (pro.customid, pro.engine_code, pro.stripe_code) == ("user_cus_b", -9, 5)
    assert pro.stripe_state == "sub_cus_b_0 active"


def test_what_the_engine_knows_as_stripe_does_is_no_difference(catalogued, stripe_api):
    """Full delivery of many lifecycles (every fate), and Stripe listing each object in its
    last state: nothing differs, at any of several instants."""
    bodies = population(15)
    ingest(catalogued, bodies)
    for obj in stripe_objects_after(bodies):
        stripe_api.add_object(PATHS[obj["object"]], obj)
    latest = max(json.loads(b)["created"] for b in bodies)
    for now in (latest + 1, latest + 40 * DAY):
        report = reconciler(catalogued, stripe_api, now).run()
        assert report.customids == 15
        assert report.differences == [], [d.to_json() for d in report.differences]


def stripe_objects_after(bodies: list[str]) -> list[dict[str, Any]]:
    """Each object as Stripe would list it after these events: its last state, except that
    a subscription whose renewal failed after its last update is past_due at Stripe (the
    update Stripe would have sent is the webhook the lifecycle leaves out)."""
    last: dict[str, dict[str, Any]] = {}
    failed: dict[str, dict[str, Any]] = {}
    for body in sorted(bodies, key=lambda b: json.loads(b)["created"]):
        envelope = json.loads(body)
        obj = envelope["data"]["object"]
        if obj.get("object") in PATHS and obj.get("id"):
            last[obj["id"]] = obj
        if envelope["type"] == "invoice.payment_failed":
            failed[obj["subscription"]] = obj
        elif obj.get("object") == "subscription":
            failed.pop(obj["id"], None)
    for sub_id, unpaid in failed.items():
        start = unpaid["lines"]["data"][0]["period"]["start"]
        period = {"current_period_start": start, "current_period_end": start + 30 * DAY}
        last[sub_id] = {**last[sub_id], "status": "past_due", **period}
    return list(last.values())


def test_a_key_without_a_list_permission_names_it(catalogued, stripe_api):
    stripe_api.forbidden.add("/v1/invoices")
    with pytest.raises(StripeAccessError, match="'Invoices: Read'"):
        reconciler(catalogued, stripe_api).run()


# --- The command ---------------------------------------------------------------------------------


def config_file(tmp_path: Path, database_url: str, api: RecordedStripe, key: str = KEY) -> Path:
    path = tmp_path / "entitlements.toml"
    path.write_text(
        f'[database]\nurl = "{database_url}"\n\n[apps.demo]\n'
        f'webhook_secrets = ["whsec_test_demo"]\nrest_api_keys = ["demo-key"]\n'
        f'stripe_api_key = "{key}"\nstripe_api_base = "{api.url}"\n'
        "stripe_max_requests_per_second = 50\n"
    )
    return path


def reconcile(config: Path, *args: str) -> Any:
    return CliRunner().invoke(cli.main, ["--config", str(config), "reconcile", *args])


def test_the_command_lists_the_differences_exits_1_and_fix_settles_them(
    tmp_path, database_url, stripe_api, catalogued
):
    active = subscription(0, "cus_a", "active", "prod_pro", T0, current_period_end=2**40)
    ingest(catalogued, [event("evt_created", "customer.subscription.created", T0, active)])
    stripe_api.add_object("/v1/subscriptions", {**active, "status": "canceled"})
    config = config_file(tmp_path, database_url, stripe_api)
    found = reconcile(config, "--app", "demo")
    assert found.exit_code == 1, found.output
    lines = found.stdout.splitlines()
    assert lines[0].split() == ["customid", "permission", "engine", "stripe", "state", "objects"]
    assert any(line.split()[:4] == ["user_cus_a", "pro", "5", "-5"] for line in lines[1:])
    assert lines[-1] == (
        "objects 1, customids 1, differences 2 (1 customids), recorded 0, remaining 2"
    )
    as_json = json.loads(reconcile(config, "--json").stdout)
    assert {d["permissionId"] for d in as_json["differences"]} == {"access", "pro"}
    fixed = reconcile(config, "--fix", "--json")
    assert fixed.exit_code == 0, fixed.output
    assert (json.loads(fixed.stdout)["recorded"], json.loads(fixed.stdout)["remaining"]) == (1, [])
    clean = reconcile(config)
    assert clean.exit_code == 0
    assert clean.stdout.strip().splitlines()[-1].endswith("differences 0 (0 customids), "
                                                          "recorded 0, remaining 0")  # fmt: skip


def test_the_command_fails_with_one_line_on_a_wrong_key(tmp_path, database_url, stripe_api):
    config = config_file(tmp_path, database_url, stripe_api, key="rk_test_wrong")
    result = reconcile(config)
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert "HTTP 401" in line and "rk_test_wrong" not in line
    assert "Traceback" not in result.output
