"""Permissions "now" come from an answer cache while they cannot have changed
(projections/answers.py, adapters/http/fast_path.py). It never answers what the full path
would not: a write, a catalogue change or the clock reaching the next change each give the new
answer at once; keys and rate limits apply to cached answers too. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json

from starlette.testclient import TestClient

from adapters.bootstrap import bootstrap
from adapters.config import settings_from_dict
from adapters.http.app import build_http_app
from domain.catalogue import Catalogue
from projections.answers import Answer, AnswerCache
from tests.conftest import API_KEYS, ingest
from tests.test_entitlements_api import (
    ALI,
    ALI_PAID,
    ALI_UPDATED,
    AUTH,
    OTHER_AUTH,
    connect,
    deliver,
    payment_checkout,
    real,
    setup_catalogue,
)

DAY = 86400


def ask(client: TestClient, customid: str, headers=AUTH, **params):
    return client.get("/v1/permissions", params={"customid": customid, **params}, headers=headers)


def premium(client: TestClient, customid: str, **params) -> int:
    response = ask(client, customid, **params)
    assert response.status_code == 200, response.text
    return {p["permissionId"]: p for p in response.json()["all"]}["premium"]["entitlement"]


def bought_a_pass(client: TestClient, engine) -> int:
    setup_catalogue(client)
    checkout = payment_checkout("cs_pass", "pi_pass", customid="buyer", product="prod_PASS")
    deliver(client, checkout)
    engine.entitlements.clock = lambda: checkout["created"] + 60
    return checkout["created"]


def test_the_same_question_is_answered_from_the_cache_with_the_same_body(client, engine):
    bought_a_pass(client, engine)
    first = ask(client, "buyer")
    hits = engine.answers.hits
    again = ask(client, "buyer")
    assert engine.answers.hits == hits + 1
    assert (again.status_code, again.content) == (200, first.content)
    assert again.headers["content-type"] == "application/json"
    assert json.loads(again.content)["all"][0]["entitlement"] == 3


def test_a_new_webhook_is_seen_at_once(client, engine):
    setup_catalogue(client)
    connect(client, "ali", ALI)
    engine.entitlements.clock = lambda: 1714549400
    assert premium(client, "ali") == -9
    assert premium(client, "ali") == -9  # cached
    deliver(client, real(ALI_UPDATED), real(ALI_PAID))
    assert premium(client, "ali") == 5


def test_a_catalogue_change_is_seen_at_once(client, engine):
    bought_a_pass(client, engine)
    assert premium(client, "buyer") == 3
    assert premium(client, "buyer") == 3  # cached
    response = client.put(
        "/v1/catalogue",
        json={"skus": [], "permissions": [{"permissionId": "premium", "skuIds": []}]},
        headers=AUTH,
    )
    assert response.status_code == 200, response.text
    assert premium(client, "buyer") == -9


def test_an_answer_ends_when_the_clock_reaches_its_next_change(client, engine):
    paid_at = bought_a_pass(client, engine)
    assert premium(client, "buyer") == 3
    engine.entitlements.clock = lambda: paid_at + 30 * DAY - 1  # the pass's last second
    assert premium(client, "buyer") == 3
    engine.entitlements.clock = lambda: paid_at + 30 * DAY  # elapsed: nothing was written
    assert premium(client, "buyer") == -5


def test_explain_is_cached_apart(client, engine):
    bought_a_pass(client, engine)
    plain = ask(client, "buyer").json()["all"][0]
    explained = ask(client, "buyer", explain="true").json()["all"][0]
    assert "explain" not in plain and explained["explain"]["rule"] == "purchase.pass"
    assert "explain" not in ask(client, "buyer").json()["all"][0]


def test_an_answer_at_another_instant_is_not_the_cached_one(client, engine):
    paid_at = bought_a_pass(client, engine)
    assert premium(client, "buyer") == 3
    assert premium(client, "buyer", at=str(paid_at + 31 * DAY)) == -5
    assert ask(client, "buyer", known_at="0").json()["all"] == []  # nothing was known then


def test_a_cached_answer_still_needs_the_apps_key(client, engine):
    bought_a_pass(client, engine)
    assert premium(client, "buyer") == 3
    assert ask(client, "buyer", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert ask(client, "buyer", headers={}).status_code == 401
    other = ask(client, "buyer", headers=OTHER_AUTH)  # another app: its own (empty) answer
    assert other.status_code == 200
    assert all(p["entitlement"] == -9 for p in other.json()["all"])


def test_a_cached_answer_spends_the_apps_rate_limit(settings_doc):
    settings_doc["server"] = {"rate_limit_per_second": 0.001, "rate_limit_burst": 3}
    engine = bootstrap(settings_from_dict(settings_doc, env={}))
    try:
        with TestClient(build_http_app(engine)) as client:
            setup_catalogue(client)  # 1
            assert ask(client, "nobody").status_code == 200  # 2: derived
            assert ask(client, "nobody").status_code == 200  # 3: cached
            limited = ask(client, "nobody")
            assert limited.status_code == 429 and limited.headers["Retry-After"]
    finally:
        engine.close()


def test_another_process_write_is_seen_once_this_follower_has_seen_it(settings_doc):
    """Two engines on one database: what B records, A answers once A's follower has polled
    (its background loop does so several times a second), as for any other read."""
    a = bootstrap(settings_from_dict(settings_doc, env={}))
    b = bootstrap(settings_from_dict(settings_doc, env={}))
    try:
        with TestClient(build_http_app(a)) as client:
            setup_catalogue(client)
            connect(client, "ali", ALI)
            a.entitlements.clock = lambda: 1714549400
            assert premium(client, "ali") == -9
            ingest(b, [json.dumps(real(ALI_UPDATED)), json.dumps(real(ALI_PAID))])
            b.follower.catch_up()  # B's follower applies them
            a.follower.catch_up()  # A's background poll: sees the position move
            assert premium(client, "ali") == 5
    finally:
        b.close()
        a.close()


def test_no_cached_answer_once_the_follower_has_not_looked_for_a_while(client, engine):
    bought_a_pass(client, engine)
    assert premium(client, "buyer") == 3
    engine.follower.observed_at = 0.0  # its loop stalled: the read model may have moved
    hits = engine.answers.hits
    assert premium(client, "buyer") == 3
    assert engine.answers.hits == hits


def test_the_cache_is_bounded_and_forgets_the_oldest_first():
    cache = AnswerCache(max_entries=2)
    for key in "abc":
        cache.put(key, Answer(key, (1, 5), at=100, valid_until=200))
    assert len(cache) == 2
    assert cache.get("a", (1, 5), 150) is None
    assert cache.get("c", (1, 5), 150) == "c"
    assert cache.get("c", (1, 6), 150) is None  # the read model moved
    assert cache.get("c", (2, 5), 150) is None  # another generation
    assert cache.get("c", (1, 5), 200) is None  # the next change came
    assert cache.get("c", (1, 5), 99) is None  # the clock went back
    assert cache.get("c", None, 150) is None  # not settled


def test_the_key_of_another_app_never_reads_a_cached_answer(client, engine):
    assert API_KEYS["demo"] != API_KEYS["other"]
    bought_a_pass(client, engine)
    ask(client, "buyer")
    assert ("other", "buyer", False) not in engine.answers._entries


def test_another_process_catalogue_change_is_seen_once_this_follower_has_seen_it(settings_doc):
    """A catalogue change is an event in the same log: answers derived after the position moved
    use the new catalogue (not the one each process trusts for a second for other reads)."""
    a = bootstrap(settings_from_dict(settings_doc, env={}))
    b = bootstrap(settings_from_dict(settings_doc, env={}))
    try:
        with TestClient(build_http_app(a)) as client:
            bought_a_pass(client, a)
            assert premium(client, "buyer") == 3  # A loads its catalogue
            b.catalogues.replace("demo", Catalogue.from_json({"skus": [], "permissions": []}))
            a.follower.catch_up()  # A's background poll: sees the position move
            assert ask(client, "buyer").json()["all"] == []
    finally:
        b.close()
        a.close()
