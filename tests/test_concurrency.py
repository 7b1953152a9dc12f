"""Two writers appending to one buyer at the same moment both land, once each; a redelivery racing
its original is recorded once. In one process (threads) and across server processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from adapters.bootstrap import Engine, bootstrap
from adapters.config import settings_from_dict
from adapters.stripe.envelope import parse_event
from adapters.stripe.signature import sign
from adapters.usecases.ingest import Outcome, Webhook
from domain.aggregates import Buyer, buyer_id
from tests.conftest import SECRETS, config_doc, make_event


def customer_event(n: int, customer: str = "cus_race") -> str:
    obj = {"id": customer, "object": "customer", "metadata": {"n": str(n)}}
    return make_event("customer.updated", obj, id=f"evt_race_{n:04d}")


def recorded_ids(engine: Engine, customer: str = "cus_race") -> list[str]:
    events = engine.log.history(buyer_id("demo", customer))
    return [e.stripe_event_id for e in events if isinstance(e, Buyer.StripeEventRecorded)]


def test_threads_appending_to_one_buyer_all_land_once(engine: Engine) -> None:
    bodies = [customer_event(n) for n in range(40)]
    deliveries = bodies + bodies  # every event delivered twice, concurrently

    def deliver(raw: str) -> Outcome:
        envelope, _ = parse_event(raw)
        return engine.ingestor.record(Webhook("demo", envelope, raw))

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(deliver, deliveries))

    assert outcomes.count(Outcome.RECORDED) == 40
    assert outcomes.count(Outcome.DUPLICATE) == 40
    ids = recorded_ids(engine)
    assert sorted(ids) == sorted(f"evt_race_{n:04d}" for n in range(40))
    versions = [e.originator_version for e in engine.log.history(buyer_id("demo", "cus_race"))]
    assert versions == list(range(1, 42))  # registration + 40 events, no gap, no double


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ENTITLEMENTS_CONFIG": str(config)}
    command = [sys.executable, "-m", "adapters.cli", "serve", "--port", str(port)]
    return subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wait_until_up(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited: {log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    pytest.fail(f"server did not start: {log.read_text()}")


def write_config(tmp_path: Path, database_url: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[database]\nurl = "{database_url}"\n\n'
        f'[apps.demo]\nwebhook_secrets = ["{SECRETS["demo"]}"]\nrest_api_keys = ["k"]\n'
    )
    return config


def post(port: int, raw: str) -> int:
    headers = {"Stripe-Signature": sign(raw, SECRETS["demo"], int(time.time()))}
    url = f"http://127.0.0.1:{port}/v1/stripe/webhooks/demo"
    return httpx.post(url, content=raw, headers=headers, timeout=30).status_code


def test_two_server_processes_on_one_postgres_record_each_event_once(
    tmp_path: Path, postgres_url: str
) -> None:
    config = write_config(tmp_path, postgres_url)
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"server{i}.log" for i in range(2)]
    servers = [start_server(config, port, log) for port, log in zip(ports, logs, strict=True)]
    try:
        for port, server, log in zip(ports, servers, logs, strict=True):
            wait_until_up(port, server, log)
        bodies = [customer_event(n) for n in range(30)]
        # Each event goes to both servers at once: Stripe retrying while the first is in flight.
        jobs: list[tuple[int, str]] = [(port, raw) for raw in bodies for port in ports]
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda job: post(*job), jobs))
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=10)
    assert statuses == [200] * len(jobs)
    engine = bootstrap(settings_from_dict(config_doc(postgres_url), env={}))
    try:
        assert sorted(recorded_ids(engine)) == sorted(json.loads(b)["id"] for b in bodies)
    finally:
        engine.close()


def test_concurrent_relinks_each_name_the_owner_they_really_replaced(
    engine: Engine, settings_doc
) -> None:
    """Many relinks of one customer at once, from two engines (two hosts) on one database:
    read in history order, each link event's `previous_customid` is the customid of the link
    before it, so the transfer history is a chain."""
    other_host = bootstrap(settings_from_dict(settings_doc, env={}))
    for each in (engine, other_host):
        each.follower.start_background(poll_interval=0.02)
    try:
        linkers = [engine.linker, other_host.linker]
        with ThreadPoolExecutor(max_workers=12) as pool:
            changed = list(
                pool.map(
                    lambda n: linkers[n % 2].link("demo", f"owner-{n}", "cus_relinked"),
                    range(48),
                )
            )
    finally:
        other_host.close()
    assert all(changed)
    links = [
        e
        for e in engine.log.history(buyer_id("demo", "cus_relinked"))
        if isinstance(e, Buyer.CustomidLinked)
    ]
    assert len(links) == 48
    owners = [link.customid for link in links]
    assert [link.previous_customid for link in links] == [None, *owners[:-1]]
