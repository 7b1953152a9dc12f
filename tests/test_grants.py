"""What may user X do now: answered from the grants read model (projections/grants.py), which
the projector keeps current. A question about now is one read of it: it never applies events,
never derives from a history, and never waits for the projector. The projector derives again
the answers of exactly the customids a batch touched (their buyers, links, guest payments), the
answers of an app whose catalogue changed, and the answers whose time has come (a period end
past the leeway, a pass running out), from a schedule that outlives a restart. A link or a
catalogue change is seen by the app's next query on any host. On SQLite and PostgreSQL.
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
from adapters.http.fast_path import FAST_PARAMS, fast_params
from adapters.storage.grouped_reads import GroupedReads
from domain.catalogue import Catalogue
from domain.facts import Fact, fact_from_dict
from domain.rules import derive
from projections import entitlements as entitlements_module
from projections.buyer_facts import customer_facts
from projections.grants import EXPLAINED, PERMISSIONS, SUBSCRIBER, catalogue_of
from projections.shapes import permissions_json
from tests.conftest import API_KEYS, fresh_engine, ingest, post_webhook, settle
from tests.lifecycles import CATALOGUE as LIFECYCLE_CATALOGUE
from tests.lifecycles import T0, lifecycles
from tests.test_entitlements_api import (
    ALI,
    ALI_PAID,
    ALI_UPDATED,
    AUTH,
    CATALOGUE,
    OTHER_AUTH,
    connect,
    deliver,
    payment_checkout,
    real,
    setup_catalogue,
)

DAY = 86400
ALI_PAID_PERIOD = 1714549400  # an instant within ali's paid period


def ask(client: TestClient, customid: str, headers=AUTH, **params):
    return client.get("/v1/permissions", params={"customid": customid, **params}, headers=headers)


def premium(client: TestClient, customid: str, **params) -> int:
    response = ask(client, customid, **params)
    assert response.status_code == 200, response.text
    return {p["permissionId"]: p for p in response.json()["all"]}["premium"]["entitlement"]


def bought_a_pass(client: TestClient, engine: Engine) -> int:
    """A 30-day pass bought through Checkout by "buyer"; the clock a minute after. Its time."""
    setup_catalogue(client)
    checkout = payment_checkout("cs_pass", "pi_pass", customid="buyer", product="prod_PASS")
    engine.clock.fixed = checkout["created"] + 60
    deliver(client, checkout)
    return checkout["created"]


def row(engine: Engine, customid: str, app_id: str = "demo") -> tuple | None:
    """The customid's grants row: (revision, derived_at, due)."""
    with engine.follower.reading() as cursor:
        cursor.execute(
            "SELECT revision, derived_at, due FROM customer_grants "
            "WHERE app_id = ? AND customid = ?",
            (app_id, customid),
        )
        return cursor.fetchone()


@contextlib.contextmanager
def unprojected(settings_doc) -> Iterator[tuple[Engine, TestClient]]:
    """A server whose projector is not running: what it answers is what was projected."""
    engine = bootstrap(settings_from_dict(settings_doc, env={}))
    try:
        with TestClient(build_http_app(engine)) as client:
            yield engine, client
    finally:
        engine.close()


@contextlib.contextmanager
def two_hosts(settings_doc) -> Iterator[tuple[TestClient, TestClient]]:
    """Two servers on one database; only the first runs a projector."""
    a = bootstrap(settings_from_dict(settings_doc, env={}))
    b = bootstrap(settings_from_dict(settings_doc, env={}))
    a.follower.start_background(poll_interval=0.05)
    try:
        with TestClient(build_http_app(a)) as first, TestClient(build_http_app(b)) as second:
            yield first, second
    finally:
        b.close()
        a.close()


# --- A query reads; the projector derives ----------------------------------------------------


def test_a_question_about_now_reads_what_the_projector_derived(settings_doc):
    with unprojected(settings_doc) as (engine, client):
        engine.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
        engine.clock.fixed = ALI_PAID_PERIOD
        engine.follower.start_background(0.05)  # a link waits for its projection
        connect(client, "ali", ALI)
        engine.follower.stop()
        assert premium(client, "ali") == -9
        for event in (real(ALI_UPDATED), real(ALI_PAID)):
            assert post_webhook(client, json.dumps(event)).status_code == 200
        position = engine.follower.position()
        assert premium(client, "ali") == -9  # not projected yet: the query applies nothing
        assert premium(client, "ali", explain="true") == -9
        assert engine.follower.position() == position
        assert premium(client, "ali", at=str(ALI_PAID_PERIOD)) == -9  # nor derives past it
        engine.project()
        assert premium(client, "ali") == 5
        assert ask(client, "ali").json() == derived_afresh(engine, "demo", "ali")


def test_a_query_never_waits_for_the_projectors_transaction(client, engine):
    """While the projector holds the read models' write transaction (a long batch), every kind
    of query is answered from what was committed before it."""
    bought_a_pass(client, engine)
    holding, answered = threading.Event(), threading.Event()

    def projector_busy() -> None:
        with engine.views.transaction():
            holding.set()
            answered.wait(30)

    busy = threading.Thread(target=projector_busy)
    busy.start()
    try:
        assert holding.wait(10)
        assert premium(client, "buyer") == 3
        assert premium(client, "buyer", at=str(engine.clock() - 30)) == 3
        assert client.get("/v1/subscriber", params={"customid": "buyer"}, headers=AUTH).is_success
        history = client.get("/v1/customers/buyer/history", headers=AUTH)
        assert history.status_code == 200
        assert busy.is_alive()  # all answered while the transaction was still open
    finally:
        answered.set()
        busy.join()


def test_an_answer_changes_when_its_time_comes_once_the_projector_derives_it(client, engine):
    paid_at = bought_a_pass(client, engine)
    ends = paid_at + 30 * DAY
    assert premium(client, "buyer") == 3
    assert row(engine, "buyer")[2] == ends  # due: when the pass runs out
    engine.clock.fixed = ends - 1  # its last second
    settle(engine)
    assert premium(client, "buyer") == 3
    engine.clock.fixed = ends  # nothing was written: time alone changes the answer
    settle(engine)
    assert premium(client, "buyer") == -5
    assert row(engine, "buyer")[2] is None  # nothing more will change by itself


def test_the_schedule_survives_a_restart_and_nothing_due_is_skipped(settings_doc):
    engine = bootstrap(settings_from_dict(settings_doc, env={}))
    with TestClient(build_http_app(engine)) as client:
        engine.follower.start_background(0.05)
        paid_at = bought_a_pass(client, engine)
        assert premium(client, "buyer") == 3
    engine.close()  # the projector is gone; the pass runs out meanwhile
    with unprojected(settings_doc) as (restarted, client):
        restarted.clock.fixed = paid_at + 31 * DAY
        assert premium(client, "buyer") == 3  # as projected before the restart
        restarted.follower.derive_due()  # the restarted projector's first round
        assert premium(client, "buyer") == -5


def test_explain_and_the_subscriber_are_projected_too(client, engine):
    bought_a_pass(client, engine)
    plain = ask(client, "buyer").json()["all"][0]
    explained = ask(client, "buyer", explain="true").json()["all"][0]
    assert "explain" not in plain and explained["explain"]["rule"] == "purchase.pass"
    subscriber = client.get("/v1/subscriber", params={"customid": "buyer"}, headers=AUTH).json()
    assert subscriber["permissions"] == ask(client, "buyer").json()["all"]
    (purchase,) = subscriber["purchases"]
    assert (purchase["paymentIntentId"], purchase["entitlement"]) == ("pi_pass", 3)
    missing = client.get("/v1/subscriber", params={"customid": "nobody"}, headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 1001


def test_an_answer_about_another_instant_is_derived(client, engine):
    paid_at = bought_a_pass(client, engine)
    assert premium(client, "buyer") == 3
    assert premium(client, "buyer", at=str(paid_at + 31 * DAY)) == -5
    assert ask(client, "buyer", known_at="0").json()["all"] == []  # nothing was known then


def test_someone_unknown_never_bought_anything(client, engine):
    setup_catalogue(client)
    answer = ask(client, "stranger").json()
    assert answer["subscriberId"] == "stranger"
    assert {p["permissionId"]: p["entitlement"] for p in answer["all"]} == {
        "premium": -9,
        "course": -9,
    }


# --- Questions read together (PostgreSQL: a round trip for all that wait) ------------------


def test_questions_read_together_get_the_answers_each_would_get_alone(client, engine):
    bought_a_pass(client, engine)
    settle(engine)
    questions = [
        ("demo", "buyer", PERMISSIONS),
        ("demo", "buyer", EXPLAINED),
        ("demo", "buyer", SUBSCRIBER),
        ("demo", "stranger", PERMISSIONS),  # never bought: the catalogue says so
        ("demo", "stranger", SUBSCRIBER),  # no subscriber
        ("other", "buyer", PERMISSIONS),  # another app: its own answer
        ("demo", "buyer", PERMISSIONS),  # asked twice at once
    ]
    together = engine.entitlements.now_many(questions)
    assert together == [engine.entitlements.now(*question) for question in questions]
    assert together[4] is None and json.loads(together[5]) == {"subscriberId": "buyer", "all": []}


def test_questions_waiting_beyond_the_bound_are_refused_with_503_and_retry_after(settings_doc):
    reading, release = threading.Event(), threading.Event()

    def slow_read(questions):  # the database, slow to answer
        reading.set()
        release.wait(10)
        return [b'{"subscriberId":"x","all":[]}' for _ in questions]

    with unprojected(settings_doc) as (engine, client):
        engine.grouped_reads = GroupedReads(slow_read, max_waiting=2)
        asking = [threading.Thread(target=ask, args=(client, f"c{i}")) for i in range(3)]
        asking[0].start()  # read at once, slowly: the next ones wait meanwhile
        assert reading.wait(10)
        for thread in asking[1:]:
            thread.start()
        _until(lambda: len(engine.grouped_reads._waiting) == 2)
        refused = ask(client, "one-too-many")
        release.set()
        for thread in asking:
            thread.join()
        engine.grouped_reads.close()
    assert (refused.status_code, refused.headers["Retry-After"]) == (503, "1")
    assert refused.json()["error"]["code"] == 1005


def test_a_failed_group_read_is_answered_by_the_full_path_for_each_question(settings_doc):
    def failing_read(questions):
        raise OSError("the database went away")

    with unprojected(settings_doc) as (engine, client):
        engine.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
        engine.project()
        expected = ask(client, "stranger").json()  # the direct read
        assert len(expected["all"]) == 2
        engine.grouped_reads = GroupedReads(failing_read)
        assert ask(client, "stranger").json() == expected  # the full path read it instead
        engine.grouped_reads.close()


def test_past_the_bound_of_requests_in_progress_a_question_is_refused_at_once(settings_doc):
    settings_doc["server"] = {"max_requests_in_progress": 1}
    entered, release = threading.Event(), threading.Event()
    with unprojected(settings_doc) as (engine, client):
        derive_as_usual = engine.entitlements.derivation

        def slow_derivation(*args, **kwargs):  # a long history, slow to derive
            entered.set()
            release.wait(10)
            return derive_as_usual(*args, **kwargs)

        engine.entitlements.derivation = slow_derivation
        first: list = []
        asking = threading.Thread(target=lambda: first.append(ask(client, "a", at="1700000000")))
        asking.start()
        assert entered.wait(10)
        refused = ask(client, "b", at="1700000000")
        event = real("customer.subscription.created__srm__1.json")
        webhook = post_webhook(client, json.dumps(event))
        release.set()
        asking.join()
    assert (refused.status_code, refused.headers["Retry-After"]) == (503, "1")
    assert refused.json()["error"]["code"] == 1005
    assert webhook.status_code == 200  # webhooks are never shed
    assert first[0].status_code == 200


def _until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


# --- Keys, apps and limits on the fast path ------------------------------------------------


def test_an_answer_needs_the_apps_key_and_never_shows_another_apps(client, engine):
    bought_a_pass(client, engine)
    assert API_KEYS["demo"] != API_KEYS["other"]
    assert premium(client, "buyer") == 3
    assert ask(client, "buyer", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert ask(client, "buyer", headers={}).status_code == 401
    other = ask(client, "buyer", headers=OTHER_AUTH)  # another app: its own (empty) answer
    assert other.status_code == 200
    assert other.json() == {"subscriberId": "buyer", "all": []}


def test_an_answer_spends_the_apps_rate_limit(settings_doc):
    settings_doc["server"] = {"rate_limit_per_second": 0.001, "rate_limit_burst": 2}
    with unprojected(settings_doc) as (_, client):
        assert ask(client, "nobody").status_code == 200
        assert ask(client, "nobody").status_code == 200
        limited = ask(client, "nobody")
        assert limited.status_code == 429 and limited.headers["Retry-After"]


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="customidexplaint=&%+;2F0aé ", max_size=30))
def test_the_fast_path_reads_a_query_string_as_the_full_path_does(text: str) -> None:
    """Its shortcut for queries with nothing to decode gives what `parse_qsl` gives."""
    query = text.encode("utf-8").decode("latin-1").encode("latin-1")
    params = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    names = [name for name, _ in params]
    taken = len(set(names)) == len(names) and set(names) <= FAST_PARAMS
    assert fast_params(query) == (dict(params) if taken else None)


# --- What a batch derives again ------------------------------------------------------------


def test_a_webhook_derives_again_only_the_customids_it_touched(client, engine):
    bought_a_pass(client, engine)
    before = row(engine, "buyer")
    deliver(client, real(ALI_UPDATED), real(ALI_PAID))  # another Stripe customer
    deliver(client, guest_refund("pi_someone_else", engine.clock() - 30))  # another payment
    assert post_webhook(client, json.dumps(real(ALI_UPDATED)), app_id="other").is_success
    connect(client, "ali", ALI)  # another customid
    settle(engine)
    assert row(engine, "buyer") == before
    assert row(engine, "ali") is not None


def guest_refund(payment_intent: str, created: float) -> dict:
    """A full refund on a payment made without a Stripe customer: its buyer is the payment
    (`payment:<payment_intent>`), whoever made it (the real payload, edited)."""
    event = real("charge.refunded__sse__1.json")
    event.update(id=f"evt_refund_{payment_intent}", created=int(created))
    charge = event["data"]["object"]
    charge.update(id=f"ch_{payment_intent}", customer=None, payment_intent=payment_intent)
    charge["metadata"] = {}
    return event


def test_a_refund_on_a_guest_payment_changes_the_answer_of_whoever_made_it(client, engine):
    """The refund names no customer: it lands on the payment's own history, which the
    buyer's purchase names (`payment_names`)."""
    bought_a_pass(client, engine)
    assert premium(client, "buyer") == 3
    deliver(client, guest_refund("pi_pass", engine.clock() - 30))
    assert premium(client, "buyer") == -8


def test_a_metadata_claim_on_a_new_stripe_customer_grants_its_customid(client, engine):
    setup_catalogue(client)
    engine.clock.fixed = ALI_PAID_PERIOD
    assert premium(client, "ali-by-metadata") == -9
    event = real(ALI_UPDATED)
    event["data"]["object"]["metadata"] = {"customid": "ali-by-metadata"}
    deliver(client, event)
    assert premium(client, "ali-by-metadata") == 5


def test_a_link_is_seen_by_the_next_query_and_a_relink_moves_the_grant(client, engine):
    setup_catalogue(client)
    engine.clock.fixed = ALI_PAID_PERIOD
    deliver(client, real(ALI_UPDATED))  # linked to no one yet
    assert premium(client, "first") == -9
    assert connect(client, "first", ALI).status_code == 200  # answers once projected
    assert (premium(client, "first"), premium(client, "second")) == (5, -9)
    connect(client, "second", ALI)  # a transfer
    assert (premium(client, "first"), premium(client, "second")) == (-9, 5)
    assert row(engine, "first") is None  # no Stripe customer left: like anyone unknown


def test_a_catalogue_change_is_seen_by_the_next_query_for_every_customid(client, engine):
    bought_a_pass(client, engine)
    for n in range(3):
        checkout = payment_checkout(f"cs_{n}", f"pi_{n}", customid=f"b{n}", product="prod_PASS")
        checkout["created"] = int(engine.clock()) - 60
        deliver(client, checkout)
    assert [premium(client, c) for c in ("buyer", "b0", "b1", "b2")] == [3, 3, 3, 3]
    empty = {"skus": [], "permissions": [{"permissionId": "premium", "skuIds": []}]}
    assert client.put("/v1/catalogue", json=empty, headers=AUTH).status_code == 200
    assert [premium(client, c) for c in ("buyer", "b0", "b1", "b2")] == [-9, -9, -9, -9]


def test_a_catalogue_change_derives_again_the_answers_of_its_app_only(client, engine):
    bought_a_pass(client, engine)
    before = row(engine, "buyer")
    response = client.put("/v1/catalogue", json={"skus": [], "permissions": []}, headers=OTHER_AUTH)
    assert response.status_code == 200, response.text
    settle(engine)
    assert row(engine, "buyer") == before
    assert premium(client, "buyer") == 3


# --- Several hosts --------------------------------------------------------------------------


def test_a_link_and_a_catalogue_change_are_seen_by_the_next_query_on_another_host(settings_doc):
    with two_hosts(settings_doc) as (first, second):
        setup_catalogue(first)
        first.app.state.engine.clock.fixed = ALI_PAID_PERIOD
        second.app.state.engine.clock.fixed = ALI_PAID_PERIOD
        deliver(first, real(ALI_UPDATED), real(ALI_PAID))
        assert premium(second, "ali") == -9
        assert connect(first, "ali", ALI).status_code == 200
        assert premium(second, "ali") == 5  # no wait: projected before the link answered
        emptied = {"skus": [], "permissions": [{"permissionId": "premium", "skuIds": []}]}
        assert first.put("/v1/catalogue", json=emptied, headers=AUTH).status_code == 200
        assert premium(second, "ali") == -9


# --- Starting on a database written before this read model, and configuration changes -------


def test_answers_not_derived_yet_answer_503_until_the_projector_has_derived_them(settings_doc):
    with unprojected(settings_doc) as (engine, client):
        engine.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
        checkout = payment_checkout("cs_p", "pi_p", customid="b", product="prod_PASS")
        engine.clock.fixed = checkout["created"] + 60
        ingest(engine, [json.dumps(checkout)])
        engine.project()
        with engine.follower.writing() as cursor:  # as a database from before the read model
            cursor.execute("DELETE FROM customer_grants")
        engine.follower.seed()  # what the projector does when it starts
        waiting = ask(client, "b")
        assert (waiting.status_code, waiting.headers["Retry-After"]) == (503, "1")
        assert waiting.json()["error"]["code"] == 1005
        assert (
            client.get("/v1/subscriber", params={"customid": "b"}, headers=AUTH).status_code == 503
        )
        engine.follower.derive_due()
        assert premium(client, "b") == 3


def test_a_changed_policy_derives_the_apps_answers_again(settings_doc):
    """`grace_period` lives in the configuration, not in the log: a projector that starts with
    another policy than the answers were derived with derives them again."""
    engine = bootstrap(settings_from_dict(settings_doc, env={}))
    engine.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
    event = real(ALI_UPDATED)
    subscription = event["data"]["object"]
    subscription.update(status="past_due", metadata={"customid": "late"})
    ingest(engine, [json.dumps(event)])
    engine.clock.fixed = subscription["current_period_start"] + DAY
    engine.project()
    assert engine.follower.seed()  # the policy the answers were derived with, on record
    with TestClient(build_http_app(engine)) as client:
        assert premium(client, "late") == 1  # within the 3 days of grace
    engine.close()
    settings_doc["apps"]["demo"]["grace_period"] = "PT0S"
    with unprojected(settings_doc) as (restarted, client):
        restarted.clock.fixed = subscription["current_period_start"] + DAY
        assert premium(client, "late") == 1  # derived with the former policy
        restarted.follower.seed()
        restarted.follower.derive_due()
        assert premium(client, "late") == -1  # no grace any more: in retry


# --- Kept histories --------------------------------------------------------------------------


def test_a_long_history_is_read_once_for_questions_about_any_instant(client, engine, monkeypatch):
    """Audit questions (`at`, `known_at`, explain) keep a long history sorted while the
    customid's grants row keeps its revision: one read for many instants, until an event
    touches the customer."""
    reads: list[str] = []
    real_read = entitlements_module.customer_facts

    def counted(cursor, app_id, customid, since=None):
        reads.append(customid)
        return real_read(cursor, app_id, customid, since)

    monkeypatch.setattr(entitlements_module, "customer_facts", counted)
    engine.entitlements.history_kept_from = 2  # facts: "long" for this test
    setup_catalogue(client)
    connect(client, "ali", ALI)
    deliver(client, real(ALI_UPDATED), real(ALI_PAID))
    for at in (ALI_PAID_PERIOD, ALI_PAID_PERIOD + DAY, ALI_PAID_PERIOD + 2 * DAY):
        assert premium(client, "ali", at=str(at)) == 5
    assert reads == ["ali"]
    assert post_webhook(client, json.dumps(real(ALI_UPDATED)), app_id="other").is_success
    settle(engine)  # another app's event: the history is still the kept one
    assert premium(client, "ali", at=str(ALI_PAID_PERIOD)) == 5
    assert reads == ["ali"]
    refund = guest_refund("pi_3PBXo5RxqlZt79sD1gfyEF1L", ALI_PAID_PERIOD)  # ali's payment
    deliver(client, refund)  # on the payment's own history, which ali's facts name
    assert premium(client, "ali", at=str(ALI_PAID_PERIOD)) == -8
    assert reads == ["ali", "ali"]


# --- The property: whatever happened, the projected answer is the one derived afresh ---------

PEOPLE = [f"user_cus_gen{i}" for i in range(3)] + ["nobody"]
CUSTOMERS = [f"cus_gen{i}" for i in range(3)]
PAYMENTS = [f"pi_cus_gen{i}_{n}" for i in range(3) for n in ("0", "pass")]
PAYMENTS += [f"pi_guest_{person}" for person in PEOPLE] + ["pi_nobody"]
PASS_ONLY = {"permissionId": "pass_only", "skuIds": ["pass"]}
MORE = {**LIFECYCLE_CATALOGUE, "permissions": [*LIFECYCLE_CATALOGUE["permissions"], PASS_ONLY]}
LESS = {**LIFECYCLE_CATALOGUE, "permissions": [PASS_ONLY]}


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
    st.tuples(st.just("later"), st.integers(min_value=0, max_value=40)),
    st.tuples(st.just("catalogue"), st.booleans()),
)
checks = st.tuples(st.just("check"), st.booleans())


@dataclass
class Hosts:
    """The host under test (its projector steps when told), and another on the same database."""

    client: TestClient
    engine: Engine
    other: Engine
    other_client: TestClient

    def elsewhere(self) -> Hosts:
        return Hosts(self.other_client, self.other, self.engine, self.client)


def replay_step(hosts: Hosts, step: tuple) -> None:
    client, engine = hosts.client, hosts.engine
    kind, *args = step
    if kind == "webhook":
        app_id, raw = args
        assert post_webhook(client, raw, app_id=app_id).status_code == 200
    elif kind == "elsewhere":  # the other host writes, and its projector applies it
        replay_step(hosts.elsewhere(), args[0])
        settle(hosts.other)
    elif kind == "check":  # the projector has caught up (and derived what is due): everyone asks
        settle(engine)
        for app_id in ("demo", "other"):
            for customid in PEOPLE:
                asked_and_checked(client, engine, app_id, customid, explain=args[0])
    elif kind == "later":  # time only moves on
        engine.clock.fixed = hosts.other.clock.fixed = engine.clock() + args[0] * DAY
    elif kind == "connect":
        settle(engine)  # a link waits for the projector: here it steps in the test's thread
        with answered_by_projecting(engine):
            assert client.post(
                "/v1/connect_stripe",
                json={"customid": args[0], "customerid": args[1]},
                headers=AUTH,
            ).is_success
    elif kind == "guest_pass":
        assert post_webhook(client, json.dumps(guest_pass(args[0]))).status_code == 200
    elif kind == "guest_refund":
        refund = guest_refund(args[0], T0 + 4 * DAY)
        assert post_webhook(client, json.dumps(refund)).status_code == 200
    elif kind == "catalogue":
        engine.catalogues.replace("demo", Catalogue.from_json(MORE if args[0] else LESS))


@contextlib.contextmanager
def answered_by_projecting(engine: Engine) -> Iterator[None]:
    """The write waits for its projection: a projector thread runs while it does."""
    engine.follower.start_background(0.01)
    try:
        yield
    finally:
        engine.follower.stop()


def asked_and_checked(client, engine, app_id: str, customid: str, explain: bool) -> None:
    headers = {"Authorization": f"Bearer {API_KEYS[app_id]}"}
    response = ask(client, customid, headers=headers, **({"explain": "true"} if explain else {}))
    assert response.json() == derived_afresh(engine, app_id, customid, explain)
    # Questions about any instant read the customer's history from its shelf (every history is
    # kept in this test) while no event touched it.
    for at in (int(engine.clock()), T0 + 3 * DAY):
        kept = engine.entitlements.permissions(app_id, customid, at)
        assert kept == derived_afresh_at(engine, app_id, customid, at)


def derived_afresh(engine, app_id: str, customid: str, explain: bool = False) -> dict:
    """The answer now derived from the read model's rows, read as plainly as can be."""
    permissions = derived_afresh_at(engine, app_id, customid, int(engine.clock()))
    return permissions_json(customid, permissions, explain)


def derived_afresh_at(engine, app_id: str, customid: str, at: int):
    with engine.follower.reading() as cursor:
        recorded = read_plainly(cursor, app_id, customid)
        facts = [fact for fact, _ in recorded]
        found = customer_facts(cursor, app_id, customid)
        assert (found.facts, found.recorded) == (facts, [when for _, when in recorded])
        catalogue = catalogue_of(cursor, app_id)
    assert catalogue == engine.catalogues.as_of(app_id, None)
    return derive(facts, catalogue, engine.settings.apps[app_id].policy, at).permissions


def read_plainly(cursor, app_id: str, customid: str) -> list[tuple[Fact, float]]:
    """A customid's facts with when each was recorded, as `projections/buyer_facts.py` defines
    them, one plain query at a time: the facts of its linked buyers, then those of every
    payment they name (`payment:<payment intent or charge id>`) that has a buyer of its own,
    linked to nobody else."""

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
    guests = []
    for key in (key for key in payments if key not in buyers):
        cursor.execute(
            "SELECT customid FROM buyer_links WHERE app_id = ? AND buyer_key = ?", (app_id, key)
        )
        if any(linked in (None, customid) for (linked,) in cursor.fetchall()):
            guests.append(key)
    return mine + recorded(guests)


PAYMENT_FIELDS = ("payment_intent_id", "charge_id")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_projected_answer_is_the_one_derived_afresh(backend, data) -> None:
    """Random lifecycles delivered in any order (some to another app, some through another host
    on the same database), interleaved with links, guest passes and refunds, catalogue
    changes and time moving on: once the projector has caught up, every answer about now is
    what a fresh derivation gives at that instant."""
    bodies = data.draw(lifecycles())
    script = [("webhook", "demo", raw) for raw in bodies]
    script += [("webhook", "other", raw) for raw in data.draw(st.lists(st.sampled_from(bodies)))]
    elsewhere = data.draw(st.lists(st.sampled_from(bodies), max_size=4))
    script += [("elsewhere", ("webhook", "demo", raw)) for raw in elsewhere]
    script += [("guest_pass", p) for p in data.draw(st.lists(st.sampled_from(PEOPLE), unique=True))]
    script += data.draw(st.lists(writes, max_size=12))
    script += data.draw(st.lists(checks, min_size=2, max_size=8))
    with fresh_engine(backend, MORE) as engine:
        other = bootstrap(engine.settings)
        engine.clock.fixed = other.clock.fixed = T0 + 2 * DAY
        engine.entitlements.history_kept_from = 0
        try:
            with (
                TestClient(build_http_app(engine)) as client,
                TestClient(build_http_app(other)) as other_client,
            ):
                hosts = Hosts(client, engine, other, other_client)
                for step in [*data.draw(st.permutations(script)), ("check", False)]:
                    replay_step(hosts, step)
        finally:
            other.close()
