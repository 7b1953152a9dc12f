"""The cluster's time-driven customers (scripts/clusterlib/timed.py) change as the cluster's
checks expect: each webhook makes one change, then at its instant (not a second before), with
no webhook, one more change by time to the expected code, announced to an endpoint. With a
fixed clock, in process, on SQLite and PostgreSQL: what `scripts/cluster` relies on."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest

from adapters.bootstrap import Engine
from tests.conftest import PROJECT, post_webhook
from tests.receiver import Receiver
from tests.test_entitlements_api import setup_catalogue

sys.path.insert(0, str(PROJECT / "scripts"))
from clusterlib import timed

SECRET = "whsec_out_timed"
DEMO_CATALOGUE = json.loads((PROJECT / "adapters" / "demo-catalogue.json").read_text())


@pytest.fixture
def receiver() -> Any:
    made = Receiver()
    yield made
    made.stop()


@pytest.fixture
def settings_doc(database_url: str, receiver: Receiver) -> dict[str, Any]:
    from tests.conftest import config_doc

    doc = config_doc(database_url)
    doc["apps"]["demo"]["endpoints"] = [{"url": receiver.url, "secret": SECRET}]
    doc["apps"]["demo"]["renewal_leeway"] = "P1D"
    return doc


def test_each_timed_customer_changes_once_by_webhook_then_once_by_time(
    client, engine: Engine, receiver: Receiver
):
    assert engine.outbound is not None
    engine.outbound.start()
    setup_catalogue(client, DEMO_CATALOGUE)
    now = int(time.time())
    instants = [now + 100, now + 110, now + 120]
    made = timed.build(PROJECT, instants, now)
    assert [t.kind for t in made] == list(timed.KINDS)
    engine.clock.fixed = now
    for customer in made:
        response = post_webhook(client, customer.body)
        assert response.status_code == 200, response.text
    first = receiver.wait_for(3)
    assert {b["data"]["customid"] for b in first} == {t.customid for t in made}
    assert all(b["data"]["sequence"] == 1 for b in first)
    assert all(b["data"]["cause"]["kind"] == "stripe_event" for b in first)
    before = {b["data"]["customid"]: b["data"]["changes"][0]["to"] for b in first}
    # Entitled until the instant, which is the answer's expireDate for a pass and a cancel_at.
    assert before[made[0].customid] == {"entitlement": 4, "expireDate": instants[0]}
    assert before[made[1].customid]["entitlement"] == 5
    assert before[made[2].customid] == {"entitlement": 3, "expireDate": instants[2]}

    for number, customer in enumerate(made, start=1):
        engine.clock.fixed = customer.at - 1  # its last second unchanged: nothing more
        time.sleep(0.3)
        assert len(receiver.received) == 2 + number
        engine.clock.fixed = customer.at  # its instant: one change, by time
        data = receiver.wait_for(3 + number)[-1]["data"]
        assert (data["customid"], data["sequence"]) == (customer.customid, 2)
        assert data["cause"] == {"kind": "time"}
        expected = customer.expected()  # what the cluster's checks are told
        assert data["changes"][0]["to"]["entitlement"] == expected[3]
        assert expected[:3] == [customer.customid, customer.kind, customer.at]
    time.sleep(0.3)
    assert len(receiver.received) == 6  # once each
