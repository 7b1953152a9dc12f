"""Outbound webhooks: every change of a customid's permissions is recorded on its change log,
then POSTed, signed, to each endpoint of its app, in order, at least once. A real receiver on
127.0.0.1 (tests/receiver.py); signatures checked with the stripe library; SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import stripe
from click.testing import CliRunner
from starlette.testclient import TestClient

from adapters.bootstrap import Engine, bootstrap
from adapters.cli.main import main
from adapters.config import settings_from_dict
from adapters.console import app_page as app_pages
from adapters.outbound.worker import DeliveryWorker
from domain.announcements import ChangeLog, change_log_id
from domain.catalogue import Catalogue
from projections.rebuild import rebuild
from tests.conftest import config_doc, ingest, post_webhook, settle
from tests.receiver import Receiver
from tests.test_entitlements_api import (
    AUTH,
    CATALOGUE,
    OTHER_AUTH,
    deliver,
    payment_checkout,
    setup_catalogue,
)

OUT_SECRETS = {"demo": "whsec_out_demo", "other": "whsec_out_other"}
DAY = 86400


@pytest.fixture
def receivers() -> Any:
    made = {app_id: Receiver() for app_id in OUT_SECRETS}
    yield made
    for receiver in made.values():
        receiver.stop()


@pytest.fixture
def settings_doc(database_url: str, receivers: dict[str, Receiver]) -> dict[str, Any]:
    doc = config_doc(database_url)
    for app_id, receiver in receivers.items():
        doc["apps"][app_id]["endpoints"] = [{"url": receiver.url, "secret": OUT_SECRETS[app_id]}]
    return doc


@pytest.fixture
def sending(client: TestClient, engine: Engine) -> DeliveryWorker:
    """The API with its projector and delivery worker running (as `entitlements project`)."""
    assert engine.outbound is not None
    engine.outbound.start()
    return engine.outbound


def eventually(condition: Any, timeout: float = 5.0) -> Any:
    """The condition's first truthy value, polled (fails after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "still not so after the timeout"
        time.sleep(0.02)
    return value


def verified(receiver: Receiver, app_id: str = "demo") -> list[dict[str, Any]]:
    """Every body received, each signature checked as an app would, with stripe's library."""
    for got in receiver.received:
        stripe.WebhookSignature.verify_header(got.body, got.signature, OUT_SECRETS[app_id], 300)
    return receiver.bodies()


def lifetime(client: TestClient, customid: str) -> None:
    session = f"cs_{customid}"
    deliver(client, payment_checkout(session, f"pi_{customid}", customid=customid, sku="lifetime"))


def answer(client: TestClient, customid: str, auth: dict[str, str] = AUTH) -> dict[str, Any]:
    response = client.get("/v1/permissions", params={"customid": customid}, headers=auth)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_purchase_is_announced_signed_with_the_whole_answer(client, sending, receivers):
    setup_catalogue(client)
    lifetime(client, "u1")
    receivers["demo"].wait_for(1)
    [body] = verified(receivers["demo"])
    assert body["type"] == "permissions.changed"
    assert body["app"] == "demo"
    assert body["id"].startswith("pc_")
    data = body["data"]
    assert (data["customid"], data["sequence"]) == ("u1", 1)
    assert data["changes"] == [
        {
            "permissionId": "premium",
            "glassfyEventType": 5008,
            "from": {"entitlement": -9, "expireDate": None},
            "to": {"entitlement": 3, "expireDate": None},
        }
    ]
    assert data["cause"] == {"kind": "stripe_event", "stripeEventIds": ["evt_cs_u1"]}
    assert data["permissions"] == answer(client, "u1")
    # The other app's endpoint hears nothing of it.
    time.sleep(0.3)
    assert receivers["other"].received == []


def test_the_change_is_on_the_customids_change_log_before_it_is_sent(client, sending, engine):
    setup_catalogue(client)
    lifetime(client, "u1")
    engine.outbound.publisher.publish_all()  # what the worker does within 50 ms
    [event] = engine.log.events.get(change_log_id("demo", "u1"))
    assert isinstance(event, ChangeLog.PermissionsChanged)
    assert (event.originator_version, event.customid, event.app_id) == (1, "u1", "demo")
    assert event.change_id.startswith("pc_")


def test_the_customers_history_shows_what_was_announced_and_when(client, sending, engine):
    setup_catalogue(client)
    lifetime(client, "u1")
    engine.outbound.publisher.publish_all()
    settle(engine)
    entries = client.get("/v1/customers/u1/history", params={"include": "raw"}, headers=AUTH)
    assert entries.status_code == 200, entries.text
    [announced] = [e for e in entries.json()["events"] if e["eventType"] == "PermissionsChanged"]
    assert (announced["sequence"], announced["customid"]) == (1, "u1")
    assert announced["changeId"].startswith("pc_")
    assert announced["cause"] == {"kind": "stripe_event", "stripeEventIds": ["evt_cs_u1"]}
    assert announced["changes"][0]["to"] == {"entitlement": 3, "expireDate": None}
    assert json.loads(announced["raw"])["id"] == announced["changeId"]  # the body as sent
    stripe_event = next(e for e in entries.json()["events"] if e["stripeEventId"] == "evt_cs_u1")
    assert stripe_event["position"] < announced["position"]  # heard, then announced


def test_a_webhook_that_changes_nothing_and_a_redelivery_send_nothing(client, sending, receivers):
    setup_catalogue(client)
    checkout = payment_checkout("cs_u1", "pi_u1", customid="u1", sku="lifetime")
    deliver(client, checkout)
    receivers["demo"].wait_for(1)
    deliver(client, checkout)  # Stripe redelivers it
    again = payment_checkout("cs_u1", "pi_u1", customid="u1", sku="lifetime")
    again["id"] = "evt_same_again"  # another event saying the same: the answer is unchanged
    deliver(client, again)
    time.sleep(0.5)
    assert len(receivers["demo"].received) == 1
    assert client.app.state.engine.deliveries.waiting() == 0


def test_sequence_rises_by_one_per_change_of_a_customid(client, sending, receivers, engine):
    setup_catalogue(client)
    lifetime(client, "u1")
    receivers["demo"].wait_for(1)
    # The catalogue drops the lifetime SKU: u1 loses premium (a second change, by the catalogue).
    smaller = {**CATALOGUE, "permissions": [{"permissionId": "premium", "skuIds": ["pass_30d"]}]}
    setup_catalogue(client, smaller)
    first, second = receivers["demo"].wait_for(2)
    assert [first["data"]["sequence"], second["data"]["sequence"]] == [1, 2]
    assert second["data"]["cause"] == {"kind": "catalogue"}
    assert second["data"]["changes"][0]["to"] == {"entitlement": -9, "expireDate": None}
    assert second["data"]["permissions"] == answer(client, "u1")


def test_a_catalogue_change_fans_out_to_every_affected_customid(client, sending, receivers):
    setup_catalogue(client)
    buyers = [f"u{i}" for i in range(12)]
    for customid in buyers:
        lifetime(client, customid)
    receivers["demo"].wait_for(len(buyers))
    renamed = {**CATALOGUE, "permissions": [{"permissionId": "gold", "skuIds": ["lifetime"]}]}
    setup_catalogue(client, renamed)
    bodies = receivers["demo"].wait_for(2 * len(buyers))[len(buyers) :]
    assert sorted(b["data"]["customid"] for b in bodies) == sorted(buyers)
    for body in bodies:
        changed = {c["permissionId"]: c for c in body["data"]["changes"]}
        assert changed["gold"]["to"]["entitlement"] == 3
        assert changed["premium"]["to"]["entitlement"] == -9
        assert body["data"]["cause"] == {"kind": "catalogue"}
        assert body["data"]["sequence"] == 2


def test_a_time_driven_change_is_sent_within_a_second_of_its_instant(client, sending, receivers):
    engine = client.app.state.engine
    setup_catalogue(client)
    checkout = payment_checkout("cs_pass", "pi_pass", customid="buyer", product="prod_PASS")
    engine.clock.fixed = checkout["created"] + 60
    deliver(client, checkout)
    receivers["demo"].wait_for(1)
    engine.clock.fixed = checkout["created"] + 30 * DAY  # the pass runs out now
    moved = time.time()
    _, ended = receivers["demo"].wait_for(2, timeout=5)
    assert receivers["demo"].received[1].at - moved < 1.0
    assert ended["data"]["cause"] == {"kind": "time"}
    assert ended["data"]["changes"] == [
        {
            "permissionId": "premium",
            "glassfyEventType": 5004,
            "from": {"entitlement": 3, "expireDate": checkout["created"] + 30 * DAY},
            "to": {"entitlement": -5, "expireDate": checkout["created"] + 30 * DAY},
        }
    ]


def test_tenants_hear_only_their_own_changes(client, sending, receivers):
    setup_catalogue(client)
    response = client.put("/v1/catalogue", json=CATALOGUE, headers=OTHER_AUTH)
    assert response.status_code == 200
    lifetime(client, "u1")
    checkout = payment_checkout("cs_o", "pi_o", customid="o1", sku="lifetime")
    assert post_webhook(client, json.dumps(checkout), app_id="other").status_code == 200
    settle(client.app.state.engine)
    [mine] = receivers["demo"].wait_for(1)
    [theirs] = receivers["other"].wait_for(1)
    verified(receivers["other"], "other")
    assert (mine["app"], mine["data"]["customid"]) == ("demo", "u1")
    assert (theirs["app"], theirs["data"]["customid"]) == ("other", "o1")
    time.sleep(0.3)
    assert len(receivers["demo"].received) == len(receivers["other"].received) == 1
    listed = client.get("/v1/deliveries", headers=OTHER_AUTH).json()["deliveries"]
    assert [d["customid"] for d in listed] == ["o1"]


# --- When the endpoint fails --------------------------------------------------------------


def failing(times: int, status: int = 500) -> Any:
    """An answer that fails the first `times` requests, then succeeds."""
    left = [times]

    def answer(_: Any) -> int:
        left[0] -= 1
        return status if left[0] >= 0 else 200

    return answer


def test_a_500_is_retried_and_change_2_waits_for_change_1(client, sending, receivers):
    receiver = receivers["demo"]
    receiver.answer = failing(1)
    setup_catalogue(client)
    lifetime(client, "u1")
    receiver.wait_for(1)
    smaller = {**CATALOGUE, "permissions": [{"permissionId": "premium", "skuIds": ["pass_30d"]}]}
    setup_catalogue(client, smaller)  # change 2 of u1, while change 1 waits for its retry
    bodies = receiver.wait_for(3, timeout=10)
    assert [b["data"]["sequence"] for b in bodies] == [1, 1, 2]
    assert bodies[0]["id"] == bodies[1]["id"]  # the same change, sent again
    retry_after = receiver.received[1].at - receiver.received[0].at
    assert 1.5 <= retry_after <= 4.0  # the first retry within a few seconds
    verified(receiver)


def test_a_receiver_down_then_back_gets_everything(client, sending, receivers, engine):
    receiver = receivers["demo"]
    receiver.stop()
    setup_catalogue(client)
    lifetime(client, "u1")
    lifetime(client, "u2")
    [failed, *_] = eventually(lambda: engine.deliveries.listing("demo", "failed", 10))
    assert failed["attempts"] == 1 and failed["lastStatus"] is None
    receiver.start()
    bodies = receiver.wait_for(2, timeout=10)
    assert sorted(b["data"]["customid"] for b in bodies) == ["u1", "u2"]
    eventually(lambda: engine.deliveries.waiting() == 0)


def test_a_timeout_is_a_failure_then_retried(client, engine, receivers):
    assert engine.outbound is not None
    worker = DeliveryWorker(
        engine.deliveries, engine.outbound.publisher, engine.outbound.endpoints, timeout=0.5
    )
    engine.outbound = worker
    worker.start()
    receiver = receivers["demo"]
    slow = [True]

    def answer(_: Any) -> int:
        if slow.pop() if slow else False:
            time.sleep(1.0)  # past the worker's timeout: the 2xx comes too late
        return 200

    receiver.answer = answer
    setup_catalogue(client)
    lifetime(client, "u1")
    first, second = receiver.wait_for(2, timeout=10)
    assert first["id"] == second["id"]
    [delivered] = eventually(lambda: engine.deliveries.listing("demo", "delivered", 10))
    assert delivered["attempts"] == 2


def test_after_three_days_of_failures_it_is_dead_and_can_be_redelivered(
    client, sending, receivers, engine
):
    receiver = receivers["demo"]
    receiver.answer = lambda _: 503
    setup_catalogue(client)
    lifetime(client, "u1")
    receiver.wait_for(1)
    retrying_for_three_days(engine)  # the next failure is its last
    sending.poke()
    receiver.wait_for(2)
    dead = eventually(lambda: listed(client, "dead"))
    assert dead[0]["lastStatus"] == 503 and dead[0]["nextAttemptAt"] is None
    panel = app_pages.deliveries_panel(engine, "demo")  # the console's app page shows it
    assert panel is not None and [row[2] for row in panel.rows] == ["dead"]
    assert app_pages.deliveries_panel(engine, "other").rows == []
    metrics = client.get("/metrics").text
    assert 'entitlements_deliveries{app="demo",status="dead"} 1.0' in metrics
    assert 'entitlements_deliveries{app="other",status="dead"} 0.0' in metrics
    receiver.answer = lambda _: 200
    response = client.post(f"/v1/deliveries/{dead[0]['id']}/redeliver", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json()["delivery"]["status"] == "pending"
    receiver.wait_for(3)
    eventually(lambda: listed(client, "delivered"))
    assert listed(client, "dead") == []


def test_a_dead_change_does_not_hold_up_the_next(client, sending, receivers, engine):
    receiver = receivers["demo"]
    receiver.answer = lambda got: 500 if got.json["data"]["sequence"] == 1 else 200
    setup_catalogue(client)
    lifetime(client, "u1")
    receiver.wait_for(1)
    retrying_for_three_days(engine)
    smaller = {**CATALOGUE, "permissions": [{"permissionId": "premium", "skuIds": ["pass_30d"]}]}
    setup_catalogue(client, smaller)
    sending.poke()
    bodies = receiver.wait_for(3)
    assert [b["data"]["sequence"] for b in bodies] == [1, 1, 2]


# --- The admin's routes and commands ------------------------------------------------------


def retrying_for_three_days(engine: Engine) -> None:
    """Every delivery's retries began three days ago, and its next attempt is due now."""
    with engine.views.transaction() as cursor:
        cursor.execute(
            "UPDATE deliveries SET retry_since = ?, next_attempt_at = 0", (time.time() - 3 * DAY,)
        )


def listed(client: TestClient, status: str | None = None, auth=AUTH) -> list[dict[str, Any]]:
    params = {"status": status} if status else {}
    response = client.get("/v1/deliveries", params=params, headers=auth)
    assert response.status_code == 200, response.text
    return response.json()["deliveries"]


def test_deliveries_are_listed_by_status(client, sending, receivers):
    setup_catalogue(client)
    lifetime(client, "u1")
    receivers["demo"].wait_for(1)
    eventually(lambda: listed(client, "delivered"))
    [delivery] = listed(client)
    assert delivery["customid"] == "u1" and delivery["sequence"] == 1
    assert delivery["changeId"] == receivers["demo"].bodies()[0]["id"]
    assert delivery["url"] == receivers["demo"].url
    assert listed(client, "pending") == listed(client, "dead") == []
    assert listed(client, auth=OTHER_AUTH) == []


def test_bad_requests_get_glassfys_envelope(client):
    for params in ({"status": "lost"}, {"limit": "0"}, {"limit": "x"}, {"limit": "1001"}):
        response = client.get("/v1/deliveries", params=params, headers=AUTH)
        assert response.status_code == 400, params
        assert response.json()["error"]["code"] == 1010
    missing = client.post("/v1/deliveries/dl_nothing/redeliver", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 1005
    assert client.get("/v1/deliveries").status_code == 401
    assert client.post("/v1/endpoints/test").status_code == 401


def test_an_app_cannot_redeliver_another_apps_delivery(client, sending, receivers):
    setup_catalogue(client)
    lifetime(client, "u1")
    receivers["demo"].wait_for(1)
    [delivery] = listed(client)
    response = client.post(f"/v1/deliveries/{delivery['id']}/redeliver", headers=OTHER_AUTH)
    assert response.status_code == 404


def test_endpoints_test_posts_a_signed_test_event(client, receivers):
    response = client.post("/v1/endpoints/test", headers=AUTH)
    assert response.status_code == 200, response.text
    [result] = response.json()["endpoints"]
    assert result == {"url": receivers["demo"].url, "delivered": True, "status": 200, "error": None}
    [body] = verified(receivers["demo"])
    assert body["type"] == "endpoint.test" and body["app"] == "demo"
    assert receivers["other"].received == []
    receivers["demo"].stop()
    [down] = client.post("/v1/endpoints/test", headers=AUTH).json()["endpoints"]
    assert down["delivered"] is False and down["status"] is None and down["error"]


def test_a_rebuild_that_corrects_an_answer_announces_it(client, sending, receivers, engine):
    setup_catalogue(client)
    lifetime(client, "u1")
    receivers["demo"].wait_for(1)
    # As if an older rule had answered (and announced) AutoRenewOn for this lifetime purchase:
    with engine.views.transaction() as cursor:
        cursor.execute(
            "UPDATE announced_answers SET summary = ? WHERE customid = 'u1'",
            ('{"premium": [5, null], "course": [-9, null]}',),
        )
    rebuild(engine.log, engine.views, engine.follower.projection)
    _, fixed = receivers["demo"].wait_for(2)
    assert fixed["data"]["cause"] == {"kind": "rebuild"}
    assert fixed["data"]["sequence"] == 2
    assert fixed["data"]["changes"] == [
        {
            "permissionId": "premium",
            "glassfyEventType": None,
            "from": {"entitlement": 5, "expireDate": None},
            "to": {"entitlement": 3, "expireDate": None},
        }
    ]
    rebuild(engine.log, engine.views, engine.follower.projection)  # nothing to correct now
    time.sleep(0.3)
    assert len(receivers["demo"].received) == 2


def test_a_link_is_the_cause_of_the_change_it_makes(client, sending, receivers):
    setup_catalogue(client)
    checkout = payment_checkout("cs_c", "pi_c", sku="lifetime")
    checkout["data"]["object"]["customer"] = "cus_linked"
    deliver(client, checkout)  # bought by a Stripe customer linked to nobody yet
    time.sleep(0.3)
    assert receivers["demo"].received == []
    response = client.post(
        "/v1/connect_stripe", json={"customid": "u9", "customerid": "cus_linked"}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    [body] = receivers["demo"].wait_for(1)
    assert body["data"]["customid"] == "u9"
    assert body["data"]["cause"] == {"kind": "link"}


# --- Crashes between the steps --------------------------------------------------------------


def test_a_projector_batch_rolled_back_announces_its_change_once(engine, receivers):
    engine.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
    ingest(engine, [json.dumps(payment_checkout("cs_1", "pi_1", customid="u1", sku="lifetime"))])
    announcer = engine.follower.projection.grants.announcer
    real = announcer.announce
    crashes = [RuntimeError("killed before the commit")]

    def announce_then_crash(*args: Any) -> int:
        count = real(*args)
        if count and crashes:
            raise crashes.pop()
        return count

    announcer.announce = announce_then_crash
    with pytest.raises(RuntimeError):
        engine.project()
    engine.project()  # the same batch, applied again
    assert [(c, s) for _, c, s, _ in engine.deliveries.unappended(10)] == [("u1", 1)]


def test_a_publisher_killed_after_appending_neither_loses_nor_repeats(engine, receivers):
    engine.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
    bodies = [payment_checkout(f"cs_{c}", f"pi_{c}", customid=c, sku="lifetime") for c in "ab"]
    ingest(engine, [json.dumps(body) for body in bodies])
    engine.project()
    publisher = engine.outbound.publisher

    def killed(*_: Any) -> int:
        raise RuntimeError("killed after the append, before the mark")

    engine.deliveries.appended = killed  # on the event log; not marked, no deliveries
    with pytest.raises(RuntimeError):
        publisher.publish()
    del engine.deliveries.appended
    assert publisher.publish() == 2  # appended again: the versions collide, then marked
    assert publisher.publish() == 0
    for customid in "ab":
        [event] = engine.log.events.get(change_log_id("demo", customid))
        assert event.originator_version == 1
    assert sorted(d["customid"] for d in engine.deliveries.listing("demo", "pending", 10)) == [
        "a",
        "b",
    ]


# --- The command line ---------------------------------------------------------------------


def test_the_cli_lists_and_redelivers(client, sending, receivers, settings_doc, tmp_path):
    setup_catalogue(client)
    lifetime(client, "u1")
    receivers["demo"].wait_for(1)
    [delivery] = eventually(lambda: listed(client, "delivered"))
    config = tmp_path / "config.toml"
    demo, other = (settings_doc["apps"][a] for a in ("demo", "other"))
    config.write_text(
        f'[database]\nurl = "{settings_doc["database"]["url"]}"\n\n'
        f"[apps.demo]\nwebhook_secrets = {demo['webhook_secrets']}\n"
        f'[[apps.demo.endpoints]]\nurl = "{receivers["demo"].url}"\nsecret = "s"\n\n'
        f"[apps.other]\nwebhook_secrets = {other['webhook_secrets']}\n"
    )
    runner = CliRunner()
    env = {"ENTITLEMENTS_CONFIG": str(config)}
    shown = runner.invoke(main, ["deliveries", "--status", "delivered"], env=env)
    assert shown.exit_code == 0, shown.output
    assert delivery["id"] in shown.output and "u1#1" in shown.output
    none = runner.invoke(main, ["deliveries", "--status", "dead", "--app", "demo"], env=env)
    assert none.exit_code == 0 and delivery["id"] not in none.output
    again = runner.invoke(main, ["deliveries", "redeliver", delivery["id"]], env=env)
    assert again.exit_code == 0, again.output
    receivers["demo"].wait_for(2)
    unknown = runner.invoke(main, ["deliveries", "redeliver", "dl_nothing"], env=env)
    assert unknown.exit_code == 1 and "no delivery" in unknown.output
    bad = runner.invoke(main, ["deliveries", "--status", "lost"], env=env)
    assert bad.exit_code == 2


def test_a_slow_endpoint_does_not_delay_another(database_url, receivers):
    fast, slow = receivers["demo"], Receiver()
    slow.delay = 3.0  # each answer takes 3 s
    doc = config_doc(database_url)
    doc["apps"]["demo"]["endpoints"] = [
        {"url": slow.url, "secret": OUT_SECRETS["demo"]},
        {"url": fast.url, "secret": OUT_SECRETS["demo"]},
    ]
    engine = bootstrap(settings_from_dict(doc, env={}))
    try:
        engine.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
        engine.follower.start_background(poll_interval=0.05)
        assert engine.outbound is not None
        engine.outbound.start()
        started = time.monotonic()
        bodies = [payment_checkout(f"cs_{c}", f"pi_{c}", customid=c, sku="lifetime") for c in "ab"]
        ingest(engine, [json.dumps(body) for body in bodies])
        engine.follower.poke()
        fast.wait_for(2, timeout=5)
        assert time.monotonic() - started < 2.0  # not after the slow endpoint's 3 s
        slow.wait_for(2, timeout=10)  # which gets them too, in its time
    finally:
        engine.close()
        slow.stop()
