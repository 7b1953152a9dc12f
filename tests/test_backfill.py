"""Backfill: events no webhook brought are paged from Stripe's events API and recorded once.

Against the recorded Stripe API (`tests/recorded_stripe.py`) fed with the real fixtures and with
generated lifecycles; on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from adapters import cli
from adapters.backfill import Backfill
from adapters.history import entry_json
from adapters.stripe import listing
from adapters.stripe.listing import StripeAccessError, StripeLister
from domain.aggregates import receipt_id
from domain.catalogue import Catalogue
from projections.history import HistoryFilter
from tests.conftest import PROJECT, fixture_files, fresh_engine, ingest, settle
from tests.lifecycles import CATALOGUE, T0, customids, population
from tests.recorded_stripe import KEY, RecordedStripe, running


@pytest.fixture
def stripe_api() -> Iterator[RecordedStripe]:
    yield from running()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing, "FIRST_BACKOFF", 0.01)


def fixture_bodies() -> list[str]:
    """The real events, one per event id (some sources reuse placeholder ids; Stripe never
    lists two events with one id)."""
    bodies: dict[str, str] = {}
    for path in fixture_files():
        body = path.read_text()
        bodies.setdefault(json.loads(body)["id"], body)
    return list(bodies.values())


def backfill(engine: Any, api: RecordedStripe, **bounds: Any) -> Any:
    lister = StripeLister(KEY, api.url, max_per_second=1000)
    return Backfill(engine.log, engine.ingestor, lister, "demo").run(**bounds)


def answers(engine: Any, bodies: list[str]) -> dict[str, Any]:
    settle(engine)
    at = T0 + 20 * 86400
    return {
        customid: engine.entitlements.permissions("demo", customid, at)
        for customid in customids(bodies)
    }


def test_backfill_fills_the_gaps_of_dropped_webhooks_as_full_delivery_would(
    engine, stripe_api, database_url
):
    bodies = population(12)
    for body in bodies:
        stripe_api.add_event(body)
    engine.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
    ingest(engine, bodies[::3])  # two webhooks of three were lost
    summary = backfill(engine, stripe_api)
    assert (summary.seen, summary.failed) == (len(bodies), 0)
    assert summary.duplicate == len(bodies[::3])
    assert summary.recorded == len(bodies) - len(bodies[::3])
    backend = "sqlite" if database_url.startswith("sqlite") else "postgres"
    with fresh_engine(backend, CATALOGUE) as delivered:
        ingest(delivered, bodies)
        assert answers(engine, bodies) == answers(delivered, bodies)


def test_every_real_event_is_recorded_once_over_pages_and_reruns(engine, stripe_api):
    bodies = fixture_bodies()
    for body in bodies:
        stripe_api.add_event(body)
    stripe_api.page_size = 7
    first = backfill(engine, stripe_api)
    again = backfill(engine, stripe_api)
    assert first.render() == f"seen {len(bodies)}, recorded {len(bodies)}, duplicate 0, failed 0"
    assert again.render() == f"seen {len(bodies)}, recorded 0, duplicate {len(bodies)}, failed 0"
    assert len(stripe_api.requests) == 2 * -(-len(bodies) // 7)


def test_a_429_and_a_500_mid_way_are_survived(engine, stripe_api):
    bodies = fixture_bodies()
    for body in bodies:
        stripe_api.add_event(body)
    stripe_api.page_size = 10
    stripe_api.failures = {3: 429, 5: 500}
    summary = backfill(engine, stripe_api)
    assert (summary.seen, summary.recorded, summary.failed) == (len(bodies), len(bodies), 0)
    assert not stripe_api.failures  # both were answered


def test_since_and_until_bound_the_events_read(engine, stripe_api):
    events = [json.loads(body) for body in fixture_bodies()]
    for event in events:
        stripe_api.add_event(json.dumps(event))
    instants = sorted(event["created"] for event in events)
    since, until = instants[10], instants[40]
    summary = backfill(engine, stripe_api, since=since, until=until)
    inside = [e for e in events if since <= e["created"] <= until]
    assert summary.recorded == len(inside)
    assert recorded_ids(engine, events) == {e["id"] for e in inside}


def recorded_ids(engine: Any, events: list[dict[str, Any]]) -> set[str]:
    ids = {receipt_id("demo", e["id"]): e["id"] for e in events}
    return {ids[found] for found in engine.log.last_versions(list(ids))}


def test_a_backfill_beside_live_webhooks_records_each_event_once(engine, stripe_api):
    bodies = fixture_bodies()
    for body in bodies:
        stripe_api.add_event(body)
    stripe_api.page_size = 5
    lister = StripeLister(KEY, stripe_api.url, max_per_second=1000)
    run = Backfill(engine.log, engine.ingestor, lister, "demo")
    delivered = iter(bodies)
    summary = run.run(on_page=lambda count: ingest(engine, [next(delivered, bodies[0])] * 2))
    assert summary.recorded + summary.duplicate == len(bodies)
    events = [json.loads(body) for body in bodies]
    assert recorded_ids(engine, events) == {e["id"] for e in events}


def test_a_wrong_key_is_one_clear_error(engine, stripe_api):
    lister = StripeLister("rk_test_wrong", stripe_api.url)
    with pytest.raises(StripeAccessError, match="HTTP 401"):
        Backfill(engine.log, engine.ingestor, lister, "demo").run()


def test_a_key_without_the_events_permission_names_it(engine, stripe_api):
    stripe_api.forbidden.add("/v1/events")
    lister = StripeLister(KEY, stripe_api.url)
    with pytest.raises(StripeAccessError, match="'Events: Read'"):
        Backfill(engine.log, engine.ingestor, lister, "demo").run()


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


def test_the_command_prints_the_summary_and_fails_on_a_wrong_key(
    tmp_path, database_url, stripe_api
):
    for body in fixture_bodies()[:5]:
        stripe_api.add_event(body)
    good = config_file(tmp_path, database_url, stripe_api)
    result = CliRunner().invoke(cli.main, ["--config", str(good), "backfill", "--app", "demo"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == "seen 5, recorded 5, duplicate 0, failed 0"
    wrong = config_file(tmp_path, database_url, stripe_api, key="rk_test_wrong")
    result = CliRunner().invoke(cli.main, ["--config", str(wrong), "backfill"])
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert "HTTP 401" in line and "stripe_api_key" in line and "rk_test_wrong" not in line


def test_a_backfill_killed_mid_way_then_rerun_records_nothing_twice_and_misses_nothing(
    tmp_path, database_url, stripe_api, engine
):
    bodies = fixture_bodies()
    for body in bodies:
        stripe_api.add_event(body)
    stripe_api.page_size = 4
    stripe_api.delay = 0.1
    config = config_file(tmp_path, database_url, stripe_api)
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    command = [sys.executable, "-m", "adapters.cli", "--config", str(config), "backfill"]
    process = subprocess.Popen(command, cwd=PROJECT, env=env, stderr=subprocess.DEVNULL)
    events = [json.loads(body) for body in bodies]
    deadline = time.monotonic() + 60
    while len(recorded_ids(engine, events)) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    halfway = recorded_ids(engine, events)
    assert 8 <= len(halfway) < len(bodies)
    stripe_api.delay = 0.0
    summary = backfill(engine, stripe_api)
    assert summary.duplicate == len(halfway)
    assert summary.recorded == len(bodies) - len(halfway)
    assert recorded_ids(engine, events) == {e["id"] for e in events}


def test_the_history_says_which_events_came_by_webhook_and_which_by_backfill(engine, stripe_api):
    bodies = population(2)
    webhooks, missed = bodies[::2], bodies[1::2]
    ingest(engine, webhooks)  # through the webhook's path
    for body in bodies:
        stripe_api.add_event(body)
    backfill(engine, stripe_api)
    settle(engine)
    sources = {}
    for customid in customids(bodies):
        for entry in map(entry_json, engine.history.entries("demo", customid, HistoryFilter())):
            if entry["stripeEventId"] is not None:
                sources[entry["stripeEventId"]] = entry["source"]
    assert sources == {
        **{json.loads(body)["id"]: "webhook" for body in webhooks},
        **{json.loads(body)["id"]: "backfill" for body in missed},
    }
