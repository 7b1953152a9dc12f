"""Several hosts, proven: `scripts/cluster` under load, one engine host killed with SIGKILL.

PostgreSQL, three engine hosts (each `serve` with its projector) and HAProxy, each in a network
namespace of its own; webhooks (the realistic mix of `scripts/bench`) and queries through HAProxy,
whatever did not get a 2xx sent again later, as Stripe does. Midway, every process of one host is
killed with SIGKILL; it is started again five seconds later. Then: every webhook acknowledged is
stored, none twice, every webhook is acknowledged in the end, and every host answers alike.

Needs root and `ip netns` (CI runs as root on a fresh Debian machine; HAProxy and PostgreSQL
are installed when missing); about a minute.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT

sys.path.insert(0, str(PROJECT / "scripts"))
from clusterlib import net

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster_dir() -> Path:
    why = net.can_make_namespaces()
    if why:
        pytest.skip(f"the cluster {why}")
    if net.namespaces():
        pytest.skip(f"a cluster is up already ({', '.join(net.namespaces())})")
    # Not pytest's tmp_path: PostgreSQL runs as the postgres user, which must reach its data.
    home = Path(f"/tmp/ent-cluster-test-{PROJECT.name}")
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_a_host_killed_under_load_loses_nothing_acknowledged_and_hosts_agree(cluster_dir: Path):
    report_path = cluster_dir.with_suffix(".json")
    command = [
        str(PROJECT / "scripts" / "cluster"),
        "--dir", str(cluster_dir),
        "run",
        "--seconds", "20", "--rate", "60", "--query-rate", "20", "--drain", "40",
        "--fault", "kill-host", "--host", "app2", "--at", "8", "--for", "5",
        "--json", str(report_path),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert report_path.exists(), f"no report: {done.stdout[-3000:]}{done.stderr[-3000:]}"
        report = json.loads(report_path.read_text())
    finally:
        report_path.unlink(missing_ok=True)
        assert not net.namespaces(), "the cluster was not torn down"
    webhooks, fault = report["webhooks"], report["fault"]

    # The kill landed under load: the host was taken out and put back in.
    changes = [(name, state) for _, name, state in report["balancer_changes"]]
    assert ("app2", "DOWN") in changes and changes[-1] == ("app2", "UP"), changes
    assert fault["during"]["direct2"]["statuses"].get("200", 0) == 0, fault["during"]

    assert webhooks["events_sent"] == 1200
    assert webhooks["lost"] == [], "acknowledged, then lost"
    assert webhooks["recorded_twice"] == []
    assert webhooks["acknowledged"] == webhooks["stored"] == webhooks["events_sent"]
    assert report["queries"]["statuses"].get("200", 0) > 0

    agree = report["hosts_agree"]
    assert agree["agreed"] and agree["seconds_to_agree"] <= 1.0, agree
    assert report["passed"], report["failures"]
    assert done.returncode == 0, done.stderr[-3000:]
