"""Read models follow the event log exactly once, and can be rebuilt without downtime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings

from adapters.bootstrap import Engine, bootstrap
from adapters.cli.main import main
from adapters.config import settings_from_dict
from domain.aggregates import Buyer
from domain.catalogue import Catalogue
from projections import parallel_derive
from projections.rebuild import rebuild
from tests.conftest import config_doc, fresh_engine, ingest
from tests.lifecycles import CATALOGUE, DAY, T0, customids, lifecycle, lifecycles, population

INSTANTS = [T0 + d * DAY for d in (1, 12, 33, 70)]


NOW = T0 + 12 * DAY  # answers now are derived at this instant, live or rebuilt
# A grants row's revision and derivation time say when it was derived, not what it holds.
GRANTS_COLUMNS = "app_id, customid, permissions, explained, subscriber, due"


def read_model(engine: Engine, follower=None) -> dict[str, list[tuple]]:
    """Every row of the active generation once everything is projected, in a stable order."""
    follower = follower or engine.follower
    engine.clock.fixed = NOW
    follower.catch_up()
    follower.seed()  # as a projector does when it starts
    with follower.writing() as cursor:  # every answer derived at NOW, whoever derived it before
        cursor.execute("UPDATE customer_grants SET due = 0")
    follower.derive_due()
    rows = {}
    with follower.reading() as cursor:
        for table in follower.projection.tables:
            columns = GRANTS_COLUMNS if table == "customer_grants" else "*"
            cursor.execute(f"SELECT {columns} FROM {table}")
            rows[table] = sorted(tuple(str(v) for v in row) for row in cursor.fetchall())
    return rows


def answers(engine: Engine, people: list[str]) -> dict:
    engine.project()
    return {
        (c, at): engine.entitlements.permissions("demo", c, at) for c in people for at in INSTANTS
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(bodies=lifecycles())
def test_a_rebuild_equals_the_live_read_model(backend, bodies) -> None:
    with fresh_engine(backend, CATALOGUE) as engine:
        ingest(engine, bodies)
        live_rows, live_answers = read_model(engine), answers(engine, customids(bodies))
        report = rebuild(engine.log, engine.views, engine.follower.projection, batch_size=7)
        assert (report.old_generation, report.new_generation) == (1, 2)
        assert read_model(engine) == live_rows
        assert answers(engine, customids(bodies)) == live_answers


def test_answers_a_rebuild_derives_in_worker_processes_equal_those_derived_here(
    database_url, monkeypatch
) -> None:
    monkeypatch.setattr(parallel_derive, "WORTHWHILE", 1)  # workers however few the answers
    monkeypatch.setattr(parallel_derive, "CHUNK", 9)  # several chunks, written one by one
    monkeypatch.setattr(parallel_derive, "PAGE", 20)  # and several pages of due rows
    backend = "sqlite" if database_url.startswith("sqlite") else "postgres"
    with fresh_engine(backend, CATALOGUE) as engine:
        ingest(engine, population(60))
        here = read_model(engine)["customer_grants"]  # derived by this process, at NOW
        assert len(here) > 2 * 20
        rebuild(engine.log, engine.views, engine.follower.projection, workers=2)
        with engine.follower.reading() as cursor:  # as the rebuild left them: nothing derived
            cursor.execute(f"SELECT {GRANTS_COLUMNS} FROM customer_grants")
            rebuilt = sorted(tuple(str(v) for v in row) for row in cursor.fetchall())
        assert cursor.generation == 2
        assert rebuilt == here


def test_webhooks_recorded_during_a_rebuild_are_reflected_after_the_switch(database_url) -> None:
    everyone = population(60)
    first, during = everyone[:150], everyone[150:]
    with fresh_engine(
        "sqlite" if database_url.startswith("sqlite") else "postgres", CATALOGUE
    ) as engine:
        ingest(engine, first)
        engine.follower.catch_up()
        writer = threading.Thread(target=ingest, args=(engine, during))
        writer.start()
        rebuild(engine.log, engine.views, engine.follower.projection, batch_size=5)
        writer.join()
        rows = read_model(engine)
        stripe_events = {json.loads(b)["id"] for b in first + during}
        assert {row[4] for row in rows["buyer_facts"]} == stripe_events
        # And the same as a read model built from scratch afterwards.
        rebuild(engine.log, engine.views, engine.follower.projection)
        assert read_model(engine) == rows


def test_the_old_generation_answers_until_the_switch(database_url) -> None:
    backend = "sqlite" if database_url.startswith("sqlite") else "postgres"
    bodies = population(5)
    with fresh_engine(backend, CATALOGUE) as engine:
        ingest(engine, bodies)
        before = answers(engine, customids(bodies))
        seen_during: list[dict] = []

        def query_while_rebuilding(count: int, position: int) -> None:
            seen_during.append(answers(engine, customids(bodies)))

        rebuild(engine.log, engine.views, engine.follower.projection, query_while_rebuilding, 3)
        assert seen_during and all(seen == before for seen in seen_during)
        assert answers(engine, customids(bodies)) == before


CRASHING_WORKER = """
import os, sys
from adapters.bootstrap import bootstrap
from adapters.config import load_settings
engine = bootstrap(load_settings())
projection = engine.follower.projection
applied = 0
real_apply = projection.apply
def apply_then_crash(cursor, position, event):
    global applied
    real_apply(cursor, position, event)
    applied += 1
    if applied == int(sys.argv[1]):
        os._exit(9)  # killed in the middle of a batch, its transaction still open
projection.apply = apply_then_crash
engine.follower.batch_size = 50
engine.follower.catch_up()
"""


def run_worker(config: Path, crash_after: int | None) -> int:
    env = {**os.environ, "ENTITLEMENTS_CONFIG": str(config)}
    if crash_after is None:
        command = [sys.executable, "-m", "adapters.cli", "project", "--once"]
    else:
        command = [sys.executable, "-c", CRASHING_WORKER, str(crash_after)]
    return subprocess.run(command, env=env, capture_output=True, timeout=120).returncode


def test_a_worker_killed_mid_batch_applies_every_event_once_after_restart(
    database_url, tmp_path
) -> None:
    config = tmp_path / "config.toml"
    doc = config_doc(database_url)
    config.write_text(
        f'[database]\nurl = "{doc["database"]["url"]}"\n\n'
        '[apps.demo]\nwebhook_secrets = ["whsec_x"]\nrest_api_keys = ["k"]\n'
    )
    bodies = population(30)
    engine = bootstrap(settings_from_dict(doc, env={}))
    engine.follower.stop()
    try:
        engine.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
        ingest(engine, bodies)
        assert run_worker(config, crash_after=73) == 9  # mid-way through its second batch
        assert 0 < engine.follower.position() < engine.log.recorder.max_notification_id()
        assert run_worker(config, crash_after=None) == 0  # restarted: catches up
        assert engine.follower.lag() == 0
        crashed_rows = read_model(engine)
        rebuild(engine.log, engine.views, engine.follower.projection)
        assert read_model(engine) == crashed_rows  # no gap, no double
    finally:
        engine.close()


def test_a_catalogue_preview_equals_what_applying_it_changes(database_url) -> None:
    backend = "sqlite" if database_url.startswith("sqlite") else "postgres"
    bodies = population(12)
    with fresh_engine(backend, CATALOGUE) as engine:
        ingest(engine, bodies)
        engine.project()
        people = customids(bodies)
        at = T0 + 12 * DAY
        proposed = json.loads(json.dumps(CATALOGUE))
        proposed["permissions"][1]["skuIds"] = ["basic"]  # "pro" now comes with basic, not pro
        proposed["permissions"][0]["skuIds"] = ["pro", "pass"]
        new = Catalogue.from_json(proposed)

        def valid() -> dict[str, set[str]]:
            return {
                c: {
                    p.permission_id
                    for p in engine.entitlements.permissions("demo", c, at)
                    if p.is_valid
                }
                for c in people
            }

        before = valid()
        diff = engine.entitlements.preview_catalogue("demo", new, at)
        assert valid() == before  # a preview changes nothing
        engine.catalogues.replace("demo", new)
        engine.project()
        after = valid()
        observed_gains = {
            p: sorted(c for c in people if p in after[c] - before[c]) for p in ("access", "pro")
        }
        observed_losses = {
            p: sorted(c for c in people if p in before[c] - after[c]) for p in ("access", "pro")
        }
        assert diff.gains == {p: c for p, c in observed_gains.items() if c}
        assert diff.losses == {p: c for p, c in observed_losses.items() if c}
        assert diff.gains or diff.losses  # the example does move someone


def test_rebuild_command_reports_and_switches(tmp_path) -> None:
    config = tmp_path / "config.toml"
    url = f"sqlite:///{tmp_path / 'e.sqlite'}"
    config.write_text(f'[database]\nurl = "{url}"\n\n[apps.demo]\nwebhook_secrets = ["whsec_x"]\n')
    engine = bootstrap(settings_from_dict(config_doc(url), env={}))
    ingest(engine, population(1))
    engine.close()
    result = CliRunner().invoke(main, ["--config", str(config), "rebuild"])
    assert result.exit_code == 0, result.output
    assert "generation 1 -> 2" in result.output


def test_rebuilding_one_app_recomputes_its_rows_and_keeps_the_others(database_url) -> None:
    backend = "sqlite" if database_url.startswith("sqlite") else "postgres"
    demo, other = population(8), population(5)
    with fresh_engine(backend, CATALOGUE) as engine:
        ingest(engine, demo)
        ingest(engine, other, app_id="other")
        live = read_model(engine)
        applied: list[str] = []
        for follower in (engine.follower,):
            real_apply = follower.projection.apply

            def spy(cursor, position, event, real_apply=real_apply) -> None:
                if isinstance(event, Buyer.Created):
                    applied.append((event.app_id, event.buyer_key))
                real_apply(cursor, position, event)

            follower.projection.apply = spy
            late = lifecycle(100 + len(applied), "prod_pro", 1, "renew", True)  # a new buyer
            writer = threading.Thread(target=ingest, args=(engine, late, "other"))
            writer.start()
            report = rebuild(
                engine.log, engine.views, follower.projection, batch_size=4, app_id="demo"
            )
            writer.join()
            follower.projection.apply = real_apply
            assert report.new_generation == 2
        # The demo app's buyers were replayed; the other app's were copied, except the buyers
        # that arrived during the rebuild (applied as usual, after the copy).
        replayed_others = {key for app, key in applied if app == "other"}
        assert {app for app, _ in applied} >= {"demo"}
        assert all(key.startswith("cus_gen1") and len(key) > 8 for key in replayed_others)
        per_app = read_model(engine)
        for table, expected in live.items():
            assert set(expected) <= set(per_app[table])  # nothing lost, of either app
        # And identical to a full rebuild from scratch (which includes the late webhooks).
        rebuild(engine.log, engine.views, engine.follower.projection)
        assert read_model(engine) == per_app


def as_read_before_the_second_pass(event: dict) -> list:
    """What the parser before the second pass of the rules read from an event: no
    InvoicePayments (`invoice_payment.paid` was not acted on), a credit note as a refund that
    is full only when its expanded invoice's total says so, and snapshots that say nothing of
    which came first in their second."""
    from dataclasses import replace as replaced

    from adapters.stripe.facts import facts_from_event
    from domain.facts import ChargeRefunded, CreditNoteIssued, InvoicePaymentObserved
    from domain.facts import SubscriptionObserved as Snapshot

    read = []
    for fact in facts_from_event(event):
        if isinstance(fact, InvoicePaymentObserved):
            continue
        if isinstance(fact, CreditNoteIssued):
            invoice = event["data"]["object"].get("invoice")
            total = invoice.get("total") if isinstance(invoice, dict) else None
            fact = ChargeRefunded(
                fact.event_id, fact.at, fact.charge_id, fact.payment_intent_id,
                fact.customer_id, total, fact.amount, full=total is not None
                and 0 < total <= fact.amount, invoice_id=fact.invoice_id,
            )  # fmt: skip
        if isinstance(fact, Snapshot):
            fact = replaced(fact, creation=False, previous=())
        read.append(fact)
    return read


PARSER_FIXED = {"basil_refund", "basil_dispute", "credit_note"}  # fates the old reading got wrong


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_rebuild_after_the_second_pass_changes_exactly_the_answers_that_were_wrong(
    backend, monkeypatch
) -> None:
    """The rules changed for everyone at once (they run at query time); what the parser now
    reads differently takes a rebuild. Recorded and projected with the old reading, then
    rebuilt: the customers whose fate the old reading got wrong change, nobody else does."""
    from dataclasses import replace as replaced

    from adapters.stripe.readers import STRIPE_READERS
    from tests.lifecycles import FATES

    bodies = [
        body
        for i in range(2 * len(FATES))
        for body in lifecycle(i, "prod_basic", i % 6, FATES[i % len(FATES)], i % 4 == 0)
    ]
    people = customids(bodies)
    with fresh_engine(backend, CATALOGUE) as engine:
        old_reading = replaced(STRIPE_READERS, facts_from_event=as_read_before_the_second_pass)
        monkeypatch.setattr(engine.follower.projection.facts, "stripe", old_reading)
        ingest(engine, bodies)
        before = answers(engine, people)
        monkeypatch.undo()
        rebuild(engine.log, engine.views, engine.follower.projection)
        after = answers(engine, people)
    changed = {
        customid for (customid, at), answer in after.items() if before[customid, at] != answer
    }
    wrong = {
        f"user_cus_gen{i}" for i in range(2 * len(FATES)) if FATES[i % len(FATES)] in PARSER_FIXED
    }
    assert changed == wrong
