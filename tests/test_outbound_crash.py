"""The delivering process killed with SIGKILL mid-flight (`entitlements project`, which runs the
delivery worker): another one sends everything, in order per customid; a change is sent twice
only with the same `id` and `sequence`. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapters.bootstrap import bootstrap
from adapters.config import settings_from_dict
from domain.catalogue import Catalogue
from tests.conftest import API_KEYS, SECRETS, config_doc, ingest
from tests.receiver import Receiver
from tests.test_entitlements_api import CATALOGUE, payment_checkout

SECRET = "whsec_out_crash"
BUYERS = [f"u{i:02d}" for i in range(20)]


def write_config(path: Path, database_url: str, url: str) -> Path:
    path.write_text(
        f'[database]\nurl = "{database_url}"\n\n'
        f'[apps.demo]\nwebhook_secrets = ["{SECRETS["demo"]}"]\n'
        f'rest_api_keys = ["{API_KEYS["demo"]}"]\n\n'
        f'[[apps.demo.endpoints]]\nurl = "{url}"\nsecret = "{SECRET}"\n'
    )
    return path


def start_projector(config: Path, log: Path) -> subprocess.Popen[bytes]:
    # A POST may take 1 s here, so a killed worker's leases end 6 s after it claimed them.
    env = {**os.environ, "ENTITLEMENTS_CONFIG": str(config), "ENTITLEMENTS_DELIVERY_TIMEOUT": "1"}
    command = [sys.executable, "-m", "adapters.cli", "project", "--poll", "0.02"]
    return subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_a_worker_killed_mid_flight_skips_nothing(tmp_path: Path, database_url: str) -> None:
    receiver = Receiver()
    receiver.delay = 0.3  # requests stay in flight a while
    config = write_config(tmp_path / "config.toml", database_url, receiver.url)
    doc = config_doc(database_url)
    doc["apps"]["demo"]["endpoints"] = [{"url": receiver.url, "secret": SECRET}]
    engine = bootstrap(settings_from_dict(doc, env={}))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        # Two changes per customid, recorded here (this process projects; nothing delivers).
        engine.catalogues.replace("demo", Catalogue.from_json(CATALOGUE))
        ingest(engine, [_lifetime(customid) for customid in BUYERS])
        engine.project()
        renamed = {**CATALOGUE, "permissions": [{"permissionId": "gold", "skuIds": ["lifetime"]}]}
        engine.catalogues.replace("demo", Catalogue.from_json(renamed))
        engine.project()

        processes.append(start_projector(config, tmp_path / "first.log"))
        receiver.wait_for(1, timeout=30)
        processes[0].send_signal(signal.SIGKILL)  # while its POSTs wait for their answers
        processes[0].wait(10)
        unanswered = engine.deliveries.listing("demo", "pending", 100)
        assert any(d["attempts"] == 0 for d in unanswered), "nothing was in flight"

        processes.append(start_projector(config, tmp_path / "second.log"))
        wanted = {(customid, sequence) for customid in BUYERS for sequence in (1, 2)}
        deadline = time.monotonic() + 60
        while {_key(b) for b in receiver.bodies()} != wanted or engine.deliveries.waiting():
            assert time.monotonic() < deadline, (tmp_path / "second.log").read_text()[-2000:]
            time.sleep(0.05)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        engine.close()
        receiver.stop()

    bodies = receiver.bodies()
    ids = {}
    for body in bodies:  # a change sent twice is the same change
        assert ids.setdefault(body["id"], _key(body)) == _key(body)
    assert len(ids) == len(wanted)
    for customid in BUYERS:  # in order per customid, repeats included
        sequences = [b["data"]["sequence"] for b in bodies if b["data"]["customid"] == customid]
        assert sequences == sorted(sequences), (customid, sequences)


def _lifetime(customid: str) -> str:
    return json.dumps(
        payment_checkout(f"cs_{customid}", f"pi_{customid}", customid=customid, sku="lifetime")
    )


def _key(body: dict) -> tuple[str, int]:
    return body["data"]["customid"], body["data"]["sequence"]
