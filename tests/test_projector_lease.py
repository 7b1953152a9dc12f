"""One active projector at a time: of every projector on one database, the one holding the lease
applies the log (and derives what is due, and publishes outbound changes); the others stand by
and take over when it stops or dies. On SQLite (a `flock` beside the file) and PostgreSQL (a
session advisory lock). Correctness never depended on it (a batch commits once whoever applies
it): what the lease saves is the others' work, so that is what these tests look at.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from adapters.bootstrap import Engine, bootstrap
from adapters.cli.main import LEASE_LOST
from adapters.config import settings_from_dict
from adapters.usecases.projector_lease import LeasedProjector
from domain.catalogue import Catalogue
from projections.rebuild import rebuild
from tests.conftest import POSTGRES_URL, config_doc, ingest, signed_headers
from tests.receiver import Receiver
from tests.test_concurrency import write_config
from tests.test_entitlements_api import CATALOGUE, payment_checkout
from tests.test_faults import Server, projector_of

QUICK = {"retry": 0.1, "check": 0.1}  # seconds: a standby's tries, the holder's checks


def eventually(condition: Callable[[], Any], timeout: float = 15.0) -> Any:
    """The condition's first truthy value, polled (fails after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "still not so after the timeout"
        time.sleep(0.05)
    return value


def lifetime(customid: str) -> str:
    ids = (f"cs_{customid}", f"pi_{customid}")
    return json.dumps(payment_checkout(*ids, customid=customid, sku="lifetime"))


def has_premium(body: bytes | None) -> bool:
    """The answer about now (the grants the projector derived) grants premium."""
    answer = json.loads(body or b"{}")
    return any(p["permissionId"] == "premium" and p["isValid"] for p in answer.get("all", []))


def premium(engine: Engine, customid: str) -> bool:
    return has_premium(engine.entitlements.now("demo", customid))


@pytest.fixture
def engines(database_url: str) -> Iterator[list[Engine]]:
    """Three engines on one database, as three processes would have: two projectors' and a
    writer's (which only records webhooks and reads answers)."""
    made = [bootstrap(settings_from_dict(config_doc(database_url), env={})) for _ in range(3)]
    made[2].catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
    yield made
    for engine in made:
        engine.close()


@pytest.fixture
def projectors(engines: list[Engine]) -> Iterator[list[LeasedProjector]]:
    made = [LeasedProjector(engine, 0.02, **QUICK) for engine in engines[:2]]
    for projector in made:
        projector.start()
    yield made
    for projector in made:
        projector.stop()


def the_active(projectors: list[LeasedProjector]) -> LeasedProjector | None:
    active = [p for p in projectors if p.active]
    assert len(active) <= 1, "two projectors active at once"
    return active[0] if active else None


def test_of_two_projectors_one_applies_and_the_other_does_no_work(engines, projectors):
    active = eventually(lambda: the_active(projectors))
    [standby] = [p for p in projectors if p is not active]
    writer = engines[2]
    ingest(writer, [lifetime(f"u{i}") for i in range(5)])
    eventually(lambda: all(premium(writer, f"u{i}") for i in range(5)))
    assert the_active(projectors) is active
    assert active.engine.follower.applied > 0
    assert standby.engine.follower.applied == 0  # nothing applied, not even lost races


def test_a_clean_stop_hands_the_lease_to_the_standby(engines, projectors):
    first = eventually(lambda: the_active(projectors))
    first.stop()
    assert not first.active
    second = eventually(lambda: the_active(projectors))
    assert second is not first
    ingest(engines[2], [lifetime("after")])
    eventually(lambda: premium(engines[2], "after"))
    assert second.engine.follower.applied > 0


def test_a_projector_failing_as_it_takes_over_releases_the_lease_to_the_other(engines):
    """Whatever fails once the lease is held (here: the follower's thread cannot start), the
    lease is released, so the other projector takes over rather than nobody ever applying."""
    failing, other = (LeasedProjector(engine, 0.02, **QUICK) for engine in engines[:2])

    def cannot_start(poll_interval: float) -> threading.Thread:
        raise RuntimeError("can't start new thread")

    failing.engine.follower.start_background = cannot_start  # type: ignore[method-assign]
    failing.start()
    try:
        time.sleep(0.3)  # it took the lease (nobody else wanted it), failed, and released it
        other.start()
        assert eventually(lambda: the_active([other]))
        ingest(engines[2], [lifetime("taken")])
        eventually(lambda: premium(engines[2], "taken"))
        assert other.engine.follower.applied > 0
    finally:
        other.stop()
        failing.stop()


def test_after_a_rebuild_switches_generations_the_active_projector_follows_the_new_one(
    engines, projectors
):
    eventually(lambda: the_active(projectors))
    writer = engines[2]
    ingest(writer, [lifetime("before")])
    eventually(lambda: premium(writer, "before"))
    report = rebuild(writer.log, writer.views, writer.follower.projection)
    assert report.new_generation == report.old_generation + 1
    ingest(writer, [lifetime("after")])
    # Answered from the new generation, which the active projector now follows to the end.
    eventually(lambda: premium(writer, "after") and premium(writer, "before"))
    eventually(lambda: writer.follower.lag() == 0)


def test_outbound_changes_are_published_by_the_active_one_and_sent_once(database_url):
    """Every projector's process runs the delivery worker: the active one publishes the
    changes it recorded, whichever sends them (each delivery claimed under a lease)."""
    receiver = Receiver()
    doc = config_doc(database_url)
    doc["apps"]["demo"]["endpoints"] = [{"url": receiver.url, "secret": "whsec_out_lease"}]
    made = [bootstrap(settings_from_dict(doc, env={})) for _ in range(3)]
    writer = made[2]
    writer.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
    projectors = [LeasedProjector(engine, 0.02, **QUICK) for engine in made[:2]]
    try:
        for engine, projector in zip(made[:2], projectors, strict=True):
            assert engine.outbound is not None
            engine.outbound.start(publish=False)  # as `entitlements project` does
            projector.start()
        eventually(lambda: the_active(projectors))
        buyers = [f"u{i}" for i in range(6)]
        ingest(writer, [lifetime(customid) for customid in buyers])
        eventually(lambda: {b["data"]["customid"] for b in receiver.bodies()} == set(buyers))
        eventually(lambda: not writer.deliveries.waiting())
    finally:
        for projector in projectors:
            projector.stop()
        for engine in made:
            engine.close()
        receiver.stop()
    ids = [body["id"] for body in receiver.bodies()]
    assert len(ids) == len(set(ids)) == len(buyers)  # each change once (nobody crashed)


def test_the_holder_that_loses_its_lease_stops_applying_at_once(postgres_url):
    """Its session ended (PostgreSQL restarted, the network cut, an operator's
    pg_terminate_backend): another projector may take over, so this one stops."""
    engine = bootstrap(settings_from_dict(config_doc(postgres_url), env={}))
    lost = threading.Event()
    projector = LeasedProjector(engine, 0.02, on_lost=lost.set, **QUICK)
    projector.start()
    try:
        eventually(lambda: projector.active)
        session = projector.lease._conn.info.backend_pid  # type: ignore[attr-defined]
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (session,))
        assert lost.wait(10), "the loss went unnoticed"
        # on_lost ran before anything else: `entitlements project` exits there. Here it
        # returned, so the projector stands by again, and takes the free lease back.
        eventually(lambda: projector.active)
    finally:
        projector.stop()
        engine.close()


def lease_sessions() -> list[int]:
    """The PostgreSQL sessions holding an advisory lock (this test server's: ours only)."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        rows = admin.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory'").fetchall()
    return [pid for (pid,) in rows]


@pytest.mark.slow
def test_a_projector_process_that_loses_its_lease_exits_for_its_supervisor(tmp_path, postgres_url):
    """`entitlements project` stops at once: it exits (75), and `serve` (or systemd) starts
    another, which stands by until the lease is free."""
    env = {**os.environ, "ENTITLEMENTS_CONFIG": str(write_config(tmp_path, postgres_url))}
    command = [sys.executable, "-m", "adapters.cli", "project", "--poll", "0.02"]
    log = tmp_path / "project.log"
    process = subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        [session] = eventually(lease_sessions)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (session,))
        assert process.wait(15) == LEASE_LOST, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert "projector lease lost" in log.read_text()


# --- real processes: `entitlements serve` hosts on one database ----------------------------------


def active_on_metrics(server: Server) -> float | None:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("entitlements_projector_active "):
            return float(line.split()[1])
    return None


def kill_host(server: Server) -> None:
    """kill -9 of every process of a host: the server and its projector."""
    child = projector_of(server)
    server.kill()
    if child is not None:
        os.kill(child, signal.SIGKILL)


@pytest.mark.slow
def test_kill_9_of_the_active_host_hands_the_lease_to_the_other(tmp_path: Path, database_url):
    """Two hosts (`serve` and its projector each) on one database: one projector applies, the
    other stands by (`/metrics`); the active host killed with SIGKILL, the other's projector
    takes over, and a webhook posted afterwards shows in its answers within seconds."""
    setup = bootstrap(settings_from_dict(config_doc(database_url), env={}))
    setup.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
    setup.close()
    hosts = [Server(tmp_path, database_url), Server(tmp_path, database_url)]
    try:
        roles = eventually(lambda: sorted_roles(hosts))
        assert roles == [0.0, 1.0]
        [active] = [h for h in hosts if active_on_metrics(h) == 1.0]
        [other] = [h for h in hosts if h is not active]
        assert asks_premium(active, "before") is False
        post(active, lifetime("before"))
        eventually(lambda: asks_premium(other, "before"))  # applied by the active one
        assert b"projector active" not in other.log.read_bytes()  # it stands by

        kill_host(active)
        post(other, lifetime("after"))
        eventually(lambda: asks_premium(other, "after"))
        assert active_on_metrics(other) == 1.0
        eventually(lambda: b"projector active" in other.log.read_bytes())  # took over
    finally:
        for host in hosts:
            if host.process.poll() is None:
                kill_host(host)


def sorted_roles(hosts: list[Server]) -> list[float] | None:
    roles = [active_on_metrics(host) for host in hosts]
    return None if None in roles or sum(roles) != 1 else sorted(roles)


def post(host: Server, raw: str) -> None:
    url = f"{host.url}/v1/stripe/webhooks/demo"
    response = httpx.post(url, content=raw, headers=signed_headers(raw), timeout=30)
    assert response.status_code == 200, response.text


def asks_premium(host: Server, customid: str) -> bool:
    headers = {"Authorization": "Bearer k"}  # tests/test_concurrency.write_config's key
    url = f"{host.url}/v1/permissions"
    response = httpx.get(url, params={"customid": customid}, headers=headers, timeout=10)
    return response.status_code == 200 and has_premium(response.content)
