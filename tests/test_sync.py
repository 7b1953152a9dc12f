"""The record of Stripe reads (backfill, import, reconcile), `GET /v1/sync`, and `serve`'s own
periodic reconcile (`reconcile_every`), once per period and one process at a time. Against the
recorded Stripe API; on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from adapters import cli
from adapters.bootstrap import bootstrap
from adapters.config import settings_from_dict
from adapters.http.asgi import create_app
from adapters.reconcile_schedule import PeriodicReconcile, lock_for
from adapters.stripe import listing
from adapters.sync_runs import SyncRun, SyncRuns, recorded
from domain.aggregates import Buyer, buyer_id
from domain.catalogue import Catalogue
from tests.conftest import config_doc, ingest, settle
from tests.lifecycles import CATALOGUE, T0, event, subscription
from tests.recorded_stripe import KEY, RecordedStripe, running
from tests.test_reconcile import config_file

HEADERS = {"Authorization": "Bearer demo-key"}
HOUR = 3600.0


@pytest.fixture
def stripe_api() -> Iterator[RecordedStripe]:
    yield from running()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "FIRST_BACKOFF", 0.01)


def test_the_last_run_of_each_command_is_read_back_newest_first(engine):
    runs = SyncRuns(engine.log)
    for n in range(120):  # more than a page of the newest-first read
        runs.record("demo", SyncRun("import", float(n), float(n) + 1, {"seen": n}))
    runs.record("demo", SyncRun("backfill", 1.0, 2.0, {"seen": 3}, error="HTTP 401"))
    latest = runs.latest("demo")
    assert set(latest) == {"import", "backfill"}
    assert latest["import"].counts == {"seen": 119}
    assert latest["backfill"].error == "HTTP 401"
    assert runs.latest("other") == {}
    settle(engine)  # the read models pass over these events


def test_get_sync_shows_each_commands_last_run_and_the_differences(client, engine):
    runs = SyncRuns(engine.log)
    difference = {"customid": "user_1", "permissionId": "pro"}
    with recorded(runs, "demo", "reconcile") as notes:
        notes.counts, notes.differences = {"differences": 1}, [difference]
    body = client.get("/v1/sync", headers=HEADERS).json()
    assert (body["appId"], body["backfill"], body["import"]) == ("demo", None, None)
    assert body["reconcile"]["counts"] == {"differences": 1}
    assert body["reconcile"]["differences"] == [difference]
    assert body["reconcile"]["failed"] is False
    assert body["reconcile"]["startedAt"] <= body["reconcile"]["finishedAt"]
    other = client.get("/v1/sync", headers={"Authorization": "Bearer other-key"}).json()
    assert other["reconcile"] is None  # an app reads only its own


def test_get_sync_needs_a_key(client):
    response = client.get("/v1/sync")
    assert response.status_code == 401
    assert response.json() == {
        "status": 401,
        "error": {"code": 1202, "description": "Invalid APIKEY"},
    }


def test_the_commands_record_their_runs_failures_included(tmp_path, database_url, stripe_api):
    stripe_api.add_object("/v1/subscriptions", subscription(0, "cus_a", "active", "prod_pro", T0))
    config = config_file(tmp_path, database_url, stripe_api)
    for command in ("import", "reconcile"):
        result = CliRunner().invoke(cli.main, ["--config", str(config), command])
        assert result.exit_code == 0, result.output
    wrong = config_file(tmp_path, database_url, stripe_api, key="rk_test_wrong")
    assert CliRunner().invoke(cli.main, ["--config", str(wrong), "backfill"]).exit_code == 1
    engine = bootstrap(settings_from_dict(config_doc(database_url), env={}))
    try:
        latest = SyncRuns(engine.log).latest("demo")
    finally:
        engine.close()
    assert latest["import"].counts == {"seen": 1, "recorded": 1, "unchanged": 0, "skipped": 0}
    assert latest["reconcile"].counts["differences"] == 0
    assert "HTTP 401" in latest["backfill"].error


# --- reconcile_every -----------------------------------------------------------------------------


@pytest.fixture
def reconciling(database_url: str, stripe_api: RecordedStripe) -> Iterator[Any]:
    """An engine whose demo app reconciles every hour, its projector in a thread (as `serve`
    with `projector = "thread"`)."""
    doc = config_doc(database_url)
    doc["apps"]["demo"].update(
        stripe_api_key=KEY, stripe_api_base=stripe_api.url, reconcile_every="PT1H"
    )
    engine = bootstrap(settings_from_dict(doc, env={}))
    engine.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
    engine.follower.start_background(poll_interval=0.05)
    yield engine
    engine.close()


def drift(engine: Any, api: RecordedStripe) -> None:
    active = subscription(0, "cus_a", "active", "prod_pro", T0, current_period_end=2**40)
    ingest(engine, [event("evt_created", "customer.subscription.created", T0, active)])
    api.add_object("/v1/subscriptions", {**active, "status": "canceled"})


def observations(engine: Any) -> list[Any]:
    history = engine.log.history(buyer_id("demo", "cus_a"))
    return [e for e in history if isinstance(e, Buyer.StripeObjectObserved)]


def test_serve_reconciles_once_per_period_and_settles_the_drift(reconciling, stripe_api):
    drift(reconciling, stripe_api)
    now = [T0 + 100.0]
    schedule = PeriodicReconcile(reconciling, clock=lambda: now[0])
    schedule.run_due()
    (observed,) = observations(reconciling)
    assert observed.command == "reconcile"
    last = SyncRuns(reconciling.log).latest("demo")["reconcile"]
    assert (last.counts["differences"], last.counts["remaining"]) == (2, 0)
    assert {d["permissionId"] for d in last.differences} == {"access", "pro"}
    requests = len(stripe_api.requests)
    assert schedule.run_due() > 0  # not due again within the hour
    assert len(stripe_api.requests) == requests
    now[0] += 2 * HOUR
    schedule.run_due()
    assert len(stripe_api.requests) > requests  # due again: Stripe read, nothing to settle
    assert len(observations(reconciling)) == 1


def test_while_another_process_reconciles_an_app_this_one_passes(reconciling, stripe_api):
    drift(reconciling, stripe_api)
    settings = reconciling.settings
    held = lock_for(settings.database_url, "demo")
    assert held.acquire()
    try:
        PeriodicReconcile(reconciling).run_due()
        assert stripe_api.requests == [] and observations(reconciling) == []
        assert not lock_for(settings.database_url, "demo").acquire()
    finally:
        held.release()
    PeriodicReconcile(reconciling).run_due()
    assert len(observations(reconciling)) == 1


def test_an_app_without_reconcile_every_is_never_reconciled(engine):
    assert PeriodicReconcile(engine).start() is None


def test_serve_reconciles_on_its_own(reconciling, stripe_api, database_url, tmp_path, monkeypatch):
    """Through the server's own start-up (`adapters/http/asgi.create_app`)."""
    drift(reconciling, stripe_api)
    config = config_file(tmp_path, database_url, stripe_api)
    text = config.read_text().replace(
        "[apps.demo]", '[server]\nprojector = "thread"\n\n[apps.demo]'
    )
    config.write_text(text + 'reconcile_every = "PT6H"\n')
    monkeypatch.setenv("ENTITLEMENTS_CONFIG", str(config))
    with TestClient(create_app()) as client:
        deadline = time.monotonic() + 30
        while (found := client.get("/v1/sync", headers=HEADERS).json())["reconcile"] is None:
            assert time.monotonic() < deadline, "no reconcile on record"
            time.sleep(0.05)
    assert found["reconcileEvery"] == 6 * HOUR
    assert found["reconcile"]["counts"]["recorded"] == 1
    assert [e.command for e in observations(reconciling)] == ["reconcile"]


@pytest.mark.parametrize("app_id", [None, "demo"])
def test_a_rebuild_passes_over_the_sync_record(engine, app_id):
    from projections.rebuild import rebuild

    active = subscription(0, "cus_a", "active", "prod_pro", T0, current_period_end=2**40)
    ingest(engine, [event("evt_created", "customer.subscription.created", T0, active)])
    SyncRuns(engine.log).record("demo", SyncRun("import", 1.0, 2.0, {"seen": 1}))
    engine.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
    settle(engine)
    before = engine.entitlements.permissions("demo", "user_cus_a", T0 + 10)
    rebuild(engine.log, engine.views, engine.follower.projection, app_id=app_id)
    settle(engine)
    assert engine.entitlements.permissions("demo", "user_cus_a", T0 + 10) == before
    assert SyncRuns(engine.log).latest("demo")["import"].counts == {"seen": 1}


def test_hosts_naming_one_database_differently_share_its_lock(postgres_url):
    other_name = postgres_url.replace("127.0.0.1", "localhost")
    held = lock_for(postgres_url, "demo")
    assert held.acquire()
    try:
        assert not lock_for(other_name, "demo").acquire()
        other_app = lock_for(postgres_url, "other")
        assert other_app.acquire()  # another app: another lock
        other_app.release()
    finally:
        held.release()
    released = lock_for(other_name, "demo")
    assert released.acquire()
    released.release()
