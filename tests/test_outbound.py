"""Outbound webhooks: every change of a customid's permissions is recorded on its change log,
then POSTed, signed, to each endpoint of its app, in order, at least once. A real receiver on
127.0.0.1 (tests/receiver.py); signatures checked with the stripe library; SQLite and PostgreSQL.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import stripe
from starlette.testclient import TestClient

from adapters.bootstrap import Engine
from adapters.outbound.store import Outcome
from adapters.outbound.worker import DeliveryWorker, next_attempt
from domain.announcements import ChangeLog, change_log_id
from tests.conftest import config_doc, post_webhook, settle
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
