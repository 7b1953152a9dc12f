"""Permissions "now" come from an answer cache while they cannot have changed
(projections/answers.py, adapters/http/fast_path.py). It never answers what the full path
would not: a write, a catalogue change or the clock reaching the next change each give the new
answer at once; keys and rate limits apply to cached answers too. A write ends only the answers
that read what it touched: the customer's buyers and guest payments, its customid's links, its
app's catalogue; a range another process applied ends them all. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from adapters.bootstrap import Engine, bootstrap
from adapters.config import settings_from_dict
from adapters.http.app import build_http_app
from adapters.http.fast_path import CACHEABLE_PARAMS, MAX_STALENESS, cacheable_params
from projections.shapes import permissions_json
from domain.catalogue import Catalogue
from domain.facts import Fact, fact_from_dict
from domain.rules import derive
from projections import follower as follower_module
from projections.answers import EVERYTHING, Answer, AnswerCache, Touched
from projections.buyer_facts import customer_facts, facts_of_customid
from tests.conftest import API_KEYS, fresh_engine, ingest, post_webhook
from tests.lifecycles import CATALOGUE as LIFECYCLE_CATALOGUE
from tests.lifecycles import T0, lifecycles
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
NO_PREMIUM_SKUS = {"skus": [], "permissions": [{"permissionId": "premium", "skuIds": []}]}


def ask(client: TestClient, customid: str, headers=AUTH, **params):
    return client.get("/v1/permissions", params={"customid": customid, **params}, headers=headers)


def premium(client: TestClient, customid: str, **params) -> int:
    response = ask(client, customid, **params)
    assert response.status_code == 200, response.text
    return {p["permissionId"]: p for p in response.json()["all"]}["premium"]["entitlement"]


@contextlib.contextmanager
def two_engines(settings_doc) -> Iterator[tuple[Engine, Engine, TestClient]]:
    """Two engines on one database, as two server processes, and a client of the first."""
    a = bootstrap(settings_from_dict(settings_doc, env={}))
    b = bootstrap(settings_from_dict(settings_doc, env={}))
    try:
        with TestClient(build_http_app(a)) as client:
            yield a, b, client
    finally:
        b.close()
        a.close()


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
    with two_engines(settings_doc) as (a, b, client):
        setup_catalogue(client)
        connect(client, "ali", ALI)
        a.entitlements.clock = lambda: 1714549400
        assert premium(client, "ali") == -9
        ingest(b, [json.dumps(real(ALI_UPDATED)), json.dumps(real(ALI_PAID))])
        b.follower.catch_up()  # B's follower applies them
        a.follower.catch_up()  # A's background poll: sees the position move
        assert premium(client, "ali") == 5


def test_no_cached_answer_once_the_follower_has_not_looked_for_a_while(client, engine):
    bought_a_pass(client, engine)
    assert premium(client, "buyer") == 3
    engine.follower.observed_at = 0.0  # its loop stalled: the read model may have moved
    hits = engine.answers.hits
    assert premium(client, "buyer") == 3
    assert engine.answers.hits == hits


def test_the_cache_is_bounded_and_forgets_the_oldest_first():
    cache = AnswerCache(max_entries=2)
    cache.applied([], 0, 5)  # the follower reported everything up to position 5
    for key in "abc":
        cache.put(key, Answer(key, (1, 5), at=100, valid_until=200, app_id="demo", customid=key))
    assert len(cache) == 2
    assert cache.get("a", (1, 5), 150) is None
    assert cache.get("c", (1, 5), 150) == "c"
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
    with two_engines(settings_doc) as (a, b, client):
        bought_a_pass(client, a)
        assert premium(client, "buyer") == 3  # A loads its catalogue
        b.catalogues.replace("demo", Catalogue.from_json({"skus": [], "permissions": []}))
        a.follower.catch_up()  # A's background poll: sees the position move
        assert ask(client, "buyer").json()["all"] == []


# --- Precise invalidation: only what an answer read ends it ---------------------------------
#
# After a write, the next question is answered in full (the write is not projected yet); once
# the follower has projected it (its background loop does so a moment later: `projected`), an
# answer that read nothing the write touched is served from the cache again.


def projected(*engines) -> None:
    """What each engine's background loop does a moment after a write."""
    for engine in engines:
        engine.follower.catch_up()


def answered_from_cache(client: TestClient, engine, customid: str, **params) -> bool:
    hits = engine.answers.hits
    ask(client, customid, **params)
    return engine.answers.hits == hits + 1


def guest_refund(payment_intent: str, created: int) -> dict:
    """A full refund on a payment made without a Stripe customer: its buyer is the payment
    (`payment:<payment_intent>`), whoever made it (the real payload, edited)."""
    event = real("charge.refunded__sse__1.json")
    event.update(id=f"evt_refund_{payment_intent}", created=created)
    charge = event["data"]["object"]
    charge.update(id=f"ch_{payment_intent}", customer=None, payment_intent=payment_intent)
    charge["metadata"] = {}
    return event


def test_a_webhook_for_another_customer_or_app_leaves_the_answer_cached(client, engine):
    paid_at = bought_a_pass(client, engine)
    first = ask(client, "buyer")
    deliver(client, real(ALI_UPDATED), real(ALI_PAID))  # another Stripe customer
    deliver(client, guest_refund("pi_someone_else", paid_at + 30))  # another guest payment
    raw = json.dumps(real(ALI_UPDATED))
    assert post_webhook(client, raw, app_id="other").status_code == 200  # another app
    connect(client, "ali", ALI)  # another customid
    projected(engine)
    hits = engine.answers.hits
    again = ask(client, "buyer")
    assert engine.answers.hits == hits + 1
    assert again.content == first.content


def test_a_webhook_for_the_customers_own_stripe_customer_ends_its_answer(client, engine):
    setup_catalogue(client)
    connect(client, "ali", ALI)
    engine.entitlements.clock = lambda: 1714549400
    assert premium(client, "ali") == -9
    assert answered_from_cache(client, engine, "ali")
    deliver(client, real(ALI_UPDATED), real(ALI_PAID))
    projected(engine)  # settled: only the floors can refuse the old answer now
    assert not answered_from_cache(client, engine, "ali")
    assert premium(client, "ali") == 5
    assert answered_from_cache(client, engine, "ali")


def history_kept(engine, customid: str, at: int) -> bool:
    """Whether an auditor's question at `at` read the customer's kept history (its answer is
    checked against a derivation from the rows)."""
    hits = engine.answers.hits
    answer = engine.entitlements.permissions("demo", customid, at)
    kept = engine.answers.hits > hits
    assert answer == derived_afresh(engine, "demo", customid, at)
    return kept


def test_a_long_history_is_read_once_for_questions_about_any_instant(client, engine):
    """Audit queries (`at`, `known_at`, explain) keep a long history sorted, on the same floors
    as the answers: one read for many instants, until an event touches the customer."""
    engine.entitlements.history_kept_from = 2  # facts: "long" for this test
    setup_catalogue(client)
    connect(client, "ali", ALI)
    deliver(client, real(ALI_UPDATED), real(ALI_PAID))
    assert not history_kept(engine, "ali", 1714549400)  # read, then kept
    assert history_kept(engine, "ali", 1714549400 - DAY)
    raw = json.dumps(real(ALI_UPDATED))
    assert post_webhook(client, raw, app_id="other").status_code == 200  # another app: kept
    projected(engine)
    assert history_kept(engine, "ali", 1714549400)
    refund = guest_refund("pi_3PBXo5RxqlZt79sD1gfyEF1L", 1714549400)  # ali's invoice payment
    deliver(client, refund)  # lands on the payment's own key, which ali's facts name: read again
    assert not history_kept(engine, "ali", 1714549400)
    assert history_kept(engine, "ali", 1714549400)


def test_a_short_history_is_read_every_time(client, engine):
    setup_catalogue(client)
    connect(client, "ali", ALI)
    deliver(client, real(ALI_UPDATED), real(ALI_PAID))
    assert not history_kept(engine, "ali", 1714549400)
    assert not history_kept(engine, "ali", 1714549400)


def test_a_refund_on_a_guest_payment_the_customer_made_ends_its_answer(client, engine):
    """The refund names no customer: it lands on the payment's own history (`payment:pi_pass`),
    which the answer depended on before it had any history at all."""
    paid_at = bought_a_pass(client, engine)
    assert premium(client, "buyer") == 3
    deliver(client, guest_refund("pi_pass", paid_at + 30))
    projected(engine)
    assert not answered_from_cache(client, engine, "buyer")
    assert premium(client, "buyer") == -8


def test_connecting_a_stripe_customer_to_the_customid_ends_its_answer(client, engine):
    setup_catalogue(client)
    deliver(client, real(ALI_UPDATED), real(ALI_PAID))  # not linked to anyone yet
    engine.entitlements.clock = lambda: 1714549400
    assert premium(client, "ali") == -9
    connect(client, "ali", ALI)
    projected(engine)
    assert not answered_from_cache(client, engine, "ali")
    assert premium(client, "ali") == 5


def test_a_metadata_claim_on_a_new_stripe_customer_ends_the_answer_of_the_customid(client, engine):
    setup_catalogue(client)
    engine.entitlements.clock = lambda: 1714549400
    assert premium(client, "ali-by-metadata") == -9
    event = real(ALI_UPDATED)
    event["data"]["object"]["metadata"] = {"customid": "ali-by-metadata"}
    deliver(client, event)
    projected(engine)
    assert not answered_from_cache(client, engine, "ali-by-metadata")
    assert premium(client, "ali-by-metadata") == 5


def test_a_relink_ends_the_answers_of_the_old_and_the_new_owner(client, engine):
    setup_catalogue(client)
    deliver(client, real(ALI_UPDATED))
    connect(client, "first", ALI)
    engine.entitlements.clock = lambda: 1714549400
    assert (premium(client, "first"), premium(client, "second")) == (5, -9)
    connect(client, "second", ALI)  # a transfer
    projected(engine)
    assert not answered_from_cache(client, engine, "first")
    assert not answered_from_cache(client, engine, "second")
    assert (premium(client, "first"), premium(client, "second")) == (-9, 5)


def test_a_catalogue_change_ends_the_answers_of_its_app_only(client, engine):
    bought_a_pass(client, engine)
    assert premium(client, "buyer") == 3
    assert ask(client, "buyer", headers=OTHER_AUTH).status_code == 200
    response = client.put("/v1/catalogue", json={"skus": [], "permissions": []}, headers=OTHER_AUTH)
    assert response.status_code == 200, response.text
    projected(engine)
    assert answered_from_cache(client, engine, "buyer")  # demo's catalogue did not change
    assert not answered_from_cache(client, engine, "buyer", headers=OTHER_AUTH)
    setup_catalogue(client, NO_PREMIUM_SKUS)
    projected(engine)
    assert not answered_from_cache(client, engine, "buyer")
    assert premium(client, "buyer") == -9


def test_a_batch_committed_but_not_yet_reported_is_never_served_past(client, engine):
    """A query thread may read the position a batch of this process's follower committed before
    the follower reports what it touched: the fast path's position stays at what was reported,
    the batch's writes (this process's) are still pending, so their answers are not served,
    and the batch is not mistaken for one applied by another process (all of it then)."""
    setup_catalogue(client)
    connect(client, "ali", ALI)
    engine.entitlements.clock = lambda: 1714549400
    assert premium(client, "ali") == -9  # cached
    report = engine.follower.on_applied
    reported: list[bool] = []

    def slow_report(touched, start, end):
        assert engine.follower.position() == end  # a query thread sees the committed batch
        stamp = engine.follower.settled(MAX_STALENESS)
        assert stamp is not None and stamp[1] == start  # what was reported so far
        assert engine.answers.get(("demo", "ali", False), stamp, 1714549400) is None
        assert engine.answers.get(("demo", "ali", False), (stamp[0], end), 1714549400) is None
        reported.append(touched is not None)  # only once every check above passed
        report(touched, start, end)

    engine.follower.on_applied = slow_report
    deliver(client, real(ALI_UPDATED), real(ALI_PAID))
    projected(engine)
    assert reported == [True]  # reported with what it touched, not as an unknown range
    assert premium(client, "ali") == 5


def test_a_range_whose_report_failed_is_reported_by_the_next_batch(engine):
    """Until then no answer is served past it; then it is judged as a range applied elsewhere."""
    cache = engine.answers
    cache.put("kept", Answer("kept", (1, 0), 0, None, "demo", "someone", ()))  # worth judging
    report = engine.follower.on_applied
    engine.follower.on_applied = lambda touched, start, end: 1 / 0
    ingest(engine, [json.dumps(real(ALI_UPDATED))])
    projected(engine)  # logged; the range stays unreported
    end = engine.follower.position()
    assert cache._horizon < end
    engine.follower.on_applied = report
    projected(engine)
    assert cache._horizon == end and cache._floors[("buyer", "demo", ALI)] == end


def test_floors_at_or_below_the_global_floor_are_dropped_and_their_number_is_bounded():
    cache = AnswerCache(max_floors=3)
    cache.put("a", Answer("a", (1, 10), 0, None, "demo", "ann", ("cus_a",)))
    cache.applied([Touched("demo", "cus_b", ("bob",))], 10, 12)
    assert cache.floors == 2 and cache.get("a", (1, 12), 1) == "a"
    cache.applied([Touched("demo", "cus_a", ("ann",))], 12, 13)
    assert cache.get("a", (1, 13), 1) is None  # its buyer was touched
    cache.applied(None, 13, 14)  # another process applied 14: unknown
    assert cache.floors == 0
    cache.put("a", Answer("a", (1, 14), 0, None, "demo", "ann", ("cus_a",)))
    assert cache.get("a", (1, 14), 1) == "a"
    cache.applied([Touched("demo", f"cus_{n}") for n in range(4)], 14, 15)  # past the bound
    assert cache.floors == 0 and cache._global_floor == 15
    assert cache.get("a", (1, 15), 1) is None
    cache.applied([EVERYTHING], 15, 16)  # an event the projection does not know
    assert cache._global_floor == 16


def test_another_process_write_applied_by_this_follower_is_reported_precisely(settings_doc):
    """B records, A's follower applies it: A knows what it touched, and keeps other answers."""
    with two_engines(settings_doc) as (a, b, client):
        bought_a_pass(client, a)
        assert premium(client, "buyer") == 3
        ingest(b, [json.dumps(real(ALI_UPDATED))])  # another customer
        projected(a)
        assert answered_from_cache(client, a, "buyer")
        ingest(b, [json.dumps(guest_refund("pi_pass", a.entitlements.clock() - 30))])
        projected(a)
        assert not answered_from_cache(client, a, "buyer")
        assert premium(client, "buyer") == -8


def test_a_range_another_process_applied_is_judged_from_the_rows_it_left(settings_doc):
    """B records and B's follower applies: A did not apply those events, but once its follower
    sees the position move, it reads which buyers they were about (and every customid those
    ever claimed) from the read model, and ends only the answers that read one of them."""
    with two_engines(settings_doc) as (a, b, client):
        bought_a_pass(client, a)
        assert premium(client, "buyer") == 3
        ingest(b, [json.dumps(real(ALI_UPDATED))])  # about another customer
        projected(b, a)
        assert answered_from_cache(client, a, "buyer")
        ingest(b, [json.dumps(guest_refund("pi_pass", a.entitlements.clock() - 30))])
        projected(b, a)
        assert not answered_from_cache(client, a, "buyer")
        assert premium(client, "buyer") == -8


# --- A server whose projector runs in a process of its own (`server.projector = "process"`) ----
#
# A is the server (it records webhooks, answers, and observes the read model: `Follower.look`,
# what `run_observing` does every few milliseconds); B's follower is its projector process.


def test_the_server_reports_what_its_projector_applied_and_keeps_other_answers(settings_doc):
    with two_engines(settings_doc) as (a, projector, client):
        projector.follower.on_applied = None  # `entitlements project`: no cache there
        bought_a_pass(client, a)
        projector.follower.catch_up()
        a.follower.look()
        assert premium(client, "buyer") == 3
        deliver(client, real(ALI_UPDATED))  # recorded by A, applied by the projector
        projector.follower.catch_up()
        a.follower.look()
        assert answered_from_cache(client, a, "buyer")
        deliver(client, guest_refund("pi_pass", a.entitlements.clock() - 30))
        assert premium(client, "buyer") == -8  # read your writes: A catches up itself
        projector.follower.catch_up()  # nothing left to apply, or it lost the race: either way
        a.follower.look()
        assert answered_from_cache(client, a, "buyer")


def test_a_range_applied_elsewhere_while_nothing_is_cached_is_not_judged(settings_doc):
    """Working out what it touched would change nothing here: it is reported as unknown."""
    with two_engines(settings_doc) as (a, projector, _):
        a.follower.look()
        reports = []
        a.follower.on_applied = lambda touched, start, end: reports.append((touched, end))
        ingest(projector, [json.dumps(real(ALI_UPDATED))])
        projector.follower.catch_up()
        a.follower.look()
        end = projector.follower.position()
        assert reports == [(None, end)] and a.follower.observed[1] == end


def test_the_server_applies_the_events_itself_when_its_projector_stalls(settings_doc):
    with two_engines(settings_doc) as (a, _, client):
        observer = threading.Thread(target=a.follower.run_observing, args=(0.02, 0.3))
        observer.start()
        try:
            deliver(client, real(ALI_UPDATED))  # and no projector runs
            deadline = time.monotonic() + 10
            while a.follower.position() < a.log.high_water and time.monotonic() < deadline:
                time.sleep(0.05)
            assert a.follower.position() == a.log.high_water
        finally:
            a.follower.stop()
            observer.join()


def test_a_customid_a_buyer_was_linked_to_within_a_range_applied_elsewhere_is_touched(
    settings_doc,
):
    """Within the range, ALI is linked to "first" and then to "second": the rows left show only
    the last link, but every customid ALI ever claimed counts as touched."""
    with two_engines(settings_doc) as (a, b, client):
        setup_catalogue(client)
        deliver(client, real(ALI_UPDATED))
        a.entitlements.clock = lambda: 1714549400
        assert (premium(client, "first"), premium(client, "second")) == (-9, -9)
        b.linker.link("demo", "first", ALI)
        b.linker.link("demo", "second", ALI)
        projected(b, a)
        assert not answered_from_cache(client, a, "first")
        assert premium(client, "second") == 5


def test_a_range_another_process_applied_that_cannot_be_judged_ends_every_answer(
    settings_doc, monkeypatch
):
    """Too long a range (after a restart, say) is not read again: it is unknown, so every
    answer derived before its end is derived again."""
    monkeypatch.setattr(follower_module, "FOREIGN_RANGE_JUDGED", 0)
    with two_engines(settings_doc) as (a, b, client):
        bought_a_pass(client, a)
        assert premium(client, "buyer") == 3
        ingest(b, [json.dumps(real(ALI_UPDATED))])  # about another customer
        projected(b, a)
        assert not answered_from_cache(client, a, "buyer")
        assert answered_from_cache(client, a, "buyer")  # derived again at the new position


# --- The property: whatever happens, a cached answer is the one derived afresh ------------------

PEOPLE = [f"user_cus_gen{i}" for i in range(3)] + ["nobody"]
CUSTOMERS = [f"cus_gen{i}" for i in range(3)]
# Payments: the lifecycles' (first invoice, pass), guest passes (below), and one of no one's.
PAYMENTS = [f"pi_cus_gen{i}_{n}" for i in range(3) for n in ("0", "pass")]
PAYMENTS += [f"pi_guest_{person}" for person in PEOPLE] + ["pi_nobody"]
# The lifecycles' catalogue, plus a permission only a pass grants (a subscription would hide
# what happens to a pass), and a smaller one to switch to.
PASS_ONLY = {"permissionId": "pass_only", "skuIds": ["pass"]}
MORE = {**LIFECYCLE_CATALOGUE, "permissions": [*LIFECYCLE_CATALOGUE["permissions"], PASS_ONLY]}
LESS = {**LIFECYCLE_CATALOGUE, "permissions": [PASS_ONLY]}
DAYS = [0, 2, 5, 12, 20, 33, 40, 70]


def guest_pass(customid: str) -> dict:
    """A pass bought through Checkout without a Stripe customer: its buyer is the customid."""
    checkout = payment_checkout(
        f"cs_guest_{customid}", f"pi_guest_{customid}", customid=customid, product="prod_pass"
    )
    checkout["created"] = T0 + DAY
    return checkout


by_anyone = st.one_of(
    st.tuples(st.just("connect"), st.sampled_from(PEOPLE[:3]), st.sampled_from(CUSTOMERS)),
    st.tuples(st.just("guest_pass"), st.sampled_from(PEOPLE)),
    st.tuples(st.just("guest_refund"), st.sampled_from(PAYMENTS)),
)
writes = st.one_of(
    by_anyone,
    st.tuples(st.just("elsewhere"), by_anyone),
    st.tuples(st.just("clock"), st.sampled_from(DAYS)),
    st.tuples(st.just("catalogue"), st.booleans()),
)
checks = st.tuples(st.just("check"), st.booleans(), st.booleans())


@dataclass
class Servers:
    """The server under test, and another process on the same database."""

    client: TestClient
    engine: Engine
    other: Engine
    other_client: TestClient

    def elsewhere(self) -> Servers:
        return Servers(self.other_client, self.other, self.engine, self.client)


def replay_step(servers: Servers, step: tuple) -> None:
    client, engine = servers.client, servers.engine
    kind, *args = step
    if kind == "webhook":
        app_id, raw = args
        assert post_webhook(client, raw, app_id=app_id).status_code == 200
    elif kind == "elsewhere":  # the other process writes and projects; ours polls a moment later
        replay_step(servers.elsewhere(), args[0])
        projected(servers.other, engine)
    elif kind == "check":  # everyone asks, maybe once the follower has projected every write
        projecting, explain = args
        if projecting:
            projected(engine)
        for app_id in ("demo", "other"):
            for customid in PEOPLE:
                asked_and_checked(client, engine, app_id, customid, explain)
    elif kind == "clock":
        engine.entitlements.clock = lambda: T0 + args[0] * DAY
    elif kind == "connect":
        assert connect(client, args[0], args[1]).status_code == 200
    elif kind == "guest_pass":
        assert post_webhook(client, json.dumps(guest_pass(args[0]))).status_code == 200
    elif kind == "guest_refund":
        refund = guest_refund(args[0], T0 + 4 * DAY)
        assert post_webhook(client, json.dumps(refund)).status_code == 200
    elif kind == "catalogue":
        setup_catalogue(client, MORE if args[0] else LESS)


def asked_and_checked(client, engine, app_id: str, customid: str, explain: bool) -> None:
    headers = {"Authorization": f"Bearer {API_KEYS[app_id]}"}
    hits = engine.answers.hits
    response = ask(client, customid, headers=headers, **({"explain": "true"} if explain else {}))
    now = int(engine.entitlements.clock())
    fresh = derived_afresh(engine, app_id, customid, now)
    source = "from the cache" if engine.answers.hits > hits else "derived"
    assert response.json() == permissions_json(customid, fresh, explain), source
    # Questions about any instant read the customer's history from its shelf (every history is
    # kept in this test) while no event touched it.
    for at in (now, T0 + 3 * DAY):
        kept = engine.entitlements.permissions(app_id, customid, at)
        assert kept == derived_afresh(engine, app_id, customid, at)


def derived_afresh(engine, app_id: str, customid: str, at: int):
    """The permissions at `at` derived from the read model's rows, no cache involved, read as
    plainly as can be (`read_plainly`); the engine's own reads must find the same."""
    engine.follower.catch_up_if_behind()
    with engine.follower.reading() as cursor:
        recorded, depends_on = read_plainly(cursor, app_id, customid)
        facts = [fact for fact, _ in recorded]
        assert [stored.fact for stored in facts_of_customid(cursor, app_id, customid)] == facts
        found = customer_facts(cursor, app_id, customid)
        assert (found.facts, found.recorded) == (facts, [when for _, when in recorded])
        assert found.depends_on() == depends_on
    catalogue = engine.catalogues.as_of(app_id, None)
    return derive(facts, catalogue, engine.settings.apps[app_id].policy, at).permissions


def read_plainly(cursor, app_id: str, customid: str) -> tuple[list[tuple[Fact, float]], tuple]:
    """A customid's facts with when each was recorded, and the buyer keys read or looked for,
    as `projections/buyer_facts.py` defines them, one plain query at a time: the facts of its
    linked buyers, then those of every payment they name (`payment:<payment intent or charge
    id>`) that has a buyer of its own, linked to nobody else."""

    def rows_of(key: str) -> list[tuple]:
        cursor.execute(
            "SELECT position, seq, body, recorded_at FROM buyer_facts "
            "WHERE app_id = ? AND buyer_key = ?",
            (app_id, key),
        )
        return cursor.fetchall()

    def recorded(keys: list[str]) -> list[tuple[Fact, float]]:
        rows = sorted(row for key in keys for row in rows_of(key))
        return [(fact_from_dict(json.loads(body)), when) for _, _, body, when in rows]

    cursor.execute(
        "SELECT buyer_key FROM buyer_links WHERE app_id = ? AND customid = ?", (app_id, customid)
    )
    buyers = sorted(key for (key,) in cursor.fetchall())
    mine = recorded(buyers)
    named = {getattr(fact, name, None) for fact, _ in mine for name in PAYMENT_FIELDS}
    payments = sorted(f"payment:{ref}" for ref in named if isinstance(ref, str))
    candidates = [key for key in payments if key not in buyers]
    guests = []
    for key in candidates:
        cursor.execute(
            "SELECT customid FROM buyer_links WHERE app_id = ? AND buyer_key = ?", (app_id, key)
        )
        if any(linked in (None, customid) for (linked,) in cursor.fetchall()):
            guests.append(key)
    return mine + recorded(guests), (*buyers, *candidates)


PAYMENT_FIELDS = ("payment_intent_id", "charge_id")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_answer_served_from_the_cache_is_the_one_derived_afresh(backend, data) -> None:
    """Random lifecycles delivered in any order (some to another app, some to another server
    process on the same database), interleaved with links, guest passes and refunds, catalogue
    changes, the clock moving, and everyone asking (projected or not): every answer is what a
    fresh derivation gives at that moment."""
    bodies = data.draw(lifecycles())
    script = [("webhook", "demo", raw) for raw in bodies]
    script += [("webhook", "other", raw) for raw in data.draw(st.lists(st.sampled_from(bodies)))]
    elsewhere = data.draw(st.lists(st.sampled_from(bodies), max_size=4))
    script += [("elsewhere", ("webhook", "demo", raw)) for raw in elsewhere]
    script += [("guest_pass", p) for p in data.draw(st.lists(st.sampled_from(PEOPLE), unique=True))]
    script += data.draw(st.lists(writes, max_size=12))
    script += data.draw(st.lists(checks, min_size=2, max_size=10))
    with fresh_engine(backend, MORE) as engine:
        other = bootstrap(engine.settings)
        engine.entitlements.clock = other.entitlements.clock = lambda: T0 + 12 * DAY
        engine.entitlements.history_kept_from = 0
        try:
            with (
                TestClient(build_http_app(engine)) as client,
                TestClient(build_http_app(other)) as other_client,
            ):
                servers = Servers(client, engine, other, other_client)
                for step in [*data.draw(st.permutations(script)), ("check", True, False)]:
                    replay_step(servers, step)
        finally:
            other.close()


def test_a_webhook_recorded_here_and_not_yet_projected_leaves_other_answers_served(client, engine):
    """The cache is told what a webhook may touch before it is saved (its buyer and every
    customid its payload carries): answers it cannot touch are still served straight away."""
    bought_a_pass(client, engine)
    first = ask(client, "buyer").content
    ingest(engine, [json.dumps(real(ALI_UPDATED))])  # recorded here, not projected yet
    assert engine.log.high_water > engine.follower.position()
    assert answered_from_cache(client, engine, "buyer")
    assert ask(client, "buyer").content == first


def test_a_derived_answer_waits_only_for_this_process_writes_that_may_touch_it(client, engine):
    """Read your writes on the full path: the read model is caught up for a write of this
    process only when the write may touch the answer asked (under a stream of webhooks,
    catching up for everyone's made every derived answer wait for a batch)."""
    setup_catalogue(client)
    connect(client, "ali", ALI)
    bought_a_pass(client, engine)
    projected(engine)
    deliver(client, real(ALI_UPDATED), real(ALI_PAID))  # saved, not projected yet
    position = engine.follower.position()
    assert premium(client, "buyer", explain="true") == 3  # derived: nothing of buyer's pending
    assert engine.follower.position() == position
    engine.entitlements.clock = lambda: 1714549400  # within ali's paid period
    assert premium(client, "ali", explain="true") == 5  # ali's webhooks: projected first
    assert engine.follower.position() > position


def test_a_webhook_recorded_here_is_seen_by_the_next_query_for_its_customer(client, engine):
    """Read your writes: an answer the webhook may touch is not served until it is projected."""
    paid_at = bought_a_pass(client, engine)
    assert premium(client, "buyer") == 3
    ingest(engine, [json.dumps(guest_refund("pi_pass", paid_at + 30))])  # not projected yet
    assert not answered_from_cache(client, engine, "buyer")
    assert premium(client, "buyer") == -8


def test_a_write_that_says_nothing_of_what_it_touches_holds_back_every_answer(client, engine):
    bought_a_pass(client, engine)
    ask(client, "buyer")
    token = engine.answers.writing(None)  # e.g. a catalogue replaced by this process
    assert not answered_from_cache(client, engine, "buyer")
    engine.answers.not_written(token)  # the save failed: nothing changed
    assert answered_from_cache(client, engine, "buyer")


def test_a_webhook_recorded_here_claiming_the_customid_holds_its_answer_back(client, engine):
    """A new Stripe customer whose payload names the customid may now be linked to it."""
    bought_a_pass(client, engine)
    ask(client, "buyer")
    event = real(ALI_UPDATED)
    event["data"]["object"]["metadata"] = {"customid": "buyer"}
    ingest(engine, [json.dumps(event)])  # not projected yet
    assert not answered_from_cache(client, engine, "buyer")


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="customidexplaint=&%+;2F0aé ", max_size=30))
def test_the_fast_path_reads_a_query_string_as_the_full_path_does(text: str) -> None:
    """Its shortcut for queries with nothing to decode gives what `parse_qsl` gives."""
    query = text.encode("utf-8").decode("latin-1").encode("latin-1")
    params = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    names = [name for name, _ in params]
    cacheable = len(set(names)) == len(names) and set(names) <= CACHEABLE_PARAMS
    assert cacheable_params(query) == (dict(params) if cacheable else None)
