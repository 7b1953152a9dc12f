#!/usr/bin/env python3
"""W8: outbound webhooks delivered per second after a catalogue change touching N customids.

    scripts/bench_outbound.py [--customids 10000] [--postgres-url URL]

In one process, as `entitlements project` runs them: the projector (a background follower)
and the delivery worker, sending to a receiver on 127.0.0.1 (uvicorn, its own process, 200 at
once). N customids each buy a lifetime pass (first wave: N changes); then the catalogue renames
the permission (second wave: N changes, each customid's sequence 2). The second wave is timed
from the catalogue's commit until every delivery is delivered: derivation, the change log,
publishing and POSTs included. The bar (issue 16): >= 1,000 changes/s.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
VENV_PYTHON = PROJECT / ".venv" / "bin" / "python"
if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != VENV_PYTHON.parent.parent.resolve():
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), str(Path(__file__).resolve()), *sys.argv[1:]])
sys.path.insert(0, str(PROJECT))

import psycopg  # noqa: E402

from adapters.bootstrap import Engine, bootstrap  # noqa: E402
from adapters.config import settings_from_dict  # noqa: E402
from adapters.stripe.envelope import parse_event  # noqa: E402
from adapters.usecases.ingest import Webhook  # noqa: E402
from domain.catalogue import Catalogue  # noqa: E402

CHECKOUT = PROJECT.parent / "shared/fixtures/stripe/events/checkout.session.completed__srm__1.json"
CATALOGUE = {
    "skus": [{"skuId": "lifetime", "productId": "prod_LIFETIME"}],
    "permissions": [{"permissionId": "premium", "skuIds": ["lifetime"]}],
}
RENAMED = {**CATALOGUE, "permissions": [{"permissionId": "gold", "skuIds": ["lifetime"]}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_receiver(port: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(PROJECT / "scripts" / "benchlib"),
        "outbound_receiver:app", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.1)
    raise SystemExit("the receiver did not start")


def checkout(n: int) -> str:
    event = json.loads(CHECKOUT.read_text())
    event["id"] = f"evt_w8_{n}"
    session = event["data"]["object"]
    session.update(
        id=f"cs_w8_{n}", payment_intent=f"pi_w8_{n}", customer=None, mode="payment",
        payment_status="paid", metadata={"customid": f"u{n}", "sku": "lifetime"},
    )  # fmt: skip
    return json.dumps(event)


def wait_delivered(engine: Engine, total: int, timeout: float = 600) -> float:
    """Seconds until `total` deliveries are delivered (and none waits)."""
    started = time.monotonic()
    while True:
        rows = engine.views.rows("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'", ())
        if int(rows[0][0]) >= total:
            return time.monotonic() - started
        if os.environ.get("W8_TRACE"):
            counts = engine.views.rows(
                "SELECT (SELECT COUNT(*) FROM permission_changes), "
                "(SELECT COUNT(*) FROM permission_changes WHERE appended = 1)",
                (),
            )[0]
            elapsed = time.monotonic() - started
            print(f"{elapsed:.2f} s: changes, appended {counts}; delivered {rows[0][0]}")
            time.sleep(0.5)
        if time.monotonic() - started > timeout:
            raise SystemExit(f"only {rows[0][0]} of {total} delivered after {timeout} s")
        time.sleep(0.01)


def run(database_url: str, customids: int) -> None:
    port = free_port()
    receiver = start_receiver(port)
    doc = {
        "database": {"url": database_url},
        "apps": {
            "demo": {
                "webhook_secrets": ["whsec_w8"],
                "rest_api_keys": ["w8"],
                "endpoints": [{"url": f"http://127.0.0.1:{port}/hooks", "secret": "whsec_out"}],
            }
        },
    }
    engine = bootstrap(settings_from_dict(doc, env={}))
    try:
        engine.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
        started = time.monotonic()
        for n in range(customids):
            raw = checkout(n)
            engine.ingestor.record(Webhook("demo", parse_event(raw)[0], raw))
        print(f"recorded {customids} purchases in {time.monotonic() - started:.1f} s")
        assert engine.outbound is not None
        engine.follower.start_background(0.02)
        engine.outbound.start()
        first = wait_delivered(engine, customids)
        print(f"first wave (purchases): {customids} changes in {first:.1f} s "
              f"= {customids / first:,.0f}/s, from recorded events")  # fmt: skip
        committed = time.monotonic()
        engine.catalogues.replace("demo", Catalogue.from_json(RENAMED))
        engine.follower.poke()
        second = wait_delivered(engine, 2 * customids) + (time.monotonic() - committed) * 0
        rate = customids / second
        verdict = "meets" if rate >= 1000 else "misses"
        print(f"W8 {engine.settings.database_url.split(':')[0]}: {customids} changes after a "
              f"catalogue change delivered in {second:.1f} s = {rate:,.0f}/s ({verdict} the "
              "bar of 1,000/s)")  # fmt: skip
    finally:
        engine.close()
        receiver.terminate()
        receiver.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customids", type=int, default=10000)
    parser.add_argument("--postgres-url", help="PostgreSQL server (a fresh schema is used)")
    args = parser.parse_args()
    if args.postgres_url is None:
        with tempfile.TemporaryDirectory() as folder:
            run(f"sqlite:///{folder}/w8.sqlite", args.customids)
        return
    schema = f"w8_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        run(f"{args.postgres_url}?schema={schema}", args.customids)
    finally:
        with psycopg.connect(args.postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
