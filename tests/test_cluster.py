"""Several hosts, proven: `scripts/cluster` under load and its faults (a host killed with
SIGKILL, PostgreSQL stopped, a host's network cut).

PostgreSQL, three engine hosts (each `serve` with its projector) and HAProxy, each in a network
namespace of its own; webhooks (the realistic mix of `scripts/bench`) and queries through HAProxy,
whatever did not get a 2xx sent again later, as Stripe does. Midway, every process of one host is
killed with SIGKILL (the host whose projector holds the lease); it is started again five seconds
later. Then: every webhook acknowledged is stored, none twice, every webhook is acknowledged in
the end, and every host answers alike.

Every host names one outbound endpoint (a receiver in a namespace of its own, checking each
signature), and 12 customers' answers change by time alone during the fault (a `cancel_at`, a
period lapsed past the renewal leeway, a pass running out). Then: every change on the change log
reached the endpoint at least once, in order per customid, and each time-driven change is on the
change log exactly once and was delivered.

Needs root and `ip netns` (CI runs as root on a fresh Debian machine; HAProxy and PostgreSQL
are installed when missing); about two minutes for the four.
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
TIMED = 12  # scripts/cluster's default --timed


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


def run_cluster(cluster_dir: Path, *options: str) -> tuple[dict, subprocess.CompletedProcess]:
    """`scripts/cluster run` (up, load with a fault, checks, down); its report."""
    report_path = cluster_dir.with_suffix(".json")
    command = [str(PROJECT / "scripts" / "cluster"), "--dir", str(cluster_dir), "run", *options]
    try:
        done = subprocess.run(
            [*command, "--json", str(report_path)], capture_output=True, text=True, timeout=300
        )
        assert report_path.exists(), f"no report: {done.stdout[-3000:]}{done.stderr[-3000:]}"
        report = json.loads(report_path.read_text())
    finally:
        report_path.unlink(missing_ok=True)
        left = net.namespaces()
        if left:  # `run` was cut short (a timeout): tear down what it left
            subprocess.run([command[0], "--dir", str(cluster_dir), "down"], timeout=120)
        assert not left, f"the cluster was not torn down: {left}"
    return report, done


def assert_nothing_lost_none_twice_hosts_agree(report: dict, sent: int) -> None:
    webhooks = report["webhooks"]
    assert webhooks["events_sent"] == sent
    assert webhooks["lost"] == [], "acknowledged, then lost"
    assert webhooks["recorded_twice"] == []
    assert webhooks["acknowledged"] == webhooks["stored"] == webhooks["events_sent"]
    assert report["queries"]["statuses"].get("200", 0) > 0
    agree = report["hosts_agree"]
    assert agree["agreed"] and agree["seconds_to_agree"] <= 1.0, agree
    assert report["passed"], report["failures"]


def assert_each_change_delivered_and_each_time_driven_change_once(
    report: dict, duplicates_allowed: bool
) -> None:
    outbound = report["outbound"]
    assert outbound["settle"]["settled"], outbound["settle"]
    changes = outbound["endpoint_changes"]
    assert changes > TIMED
    assert outbound["lost"] == [], "on the change log, never delivered"
    assert outbound["received_once_or_more"] == changes
    assert outbound["deliveries"] == {"delivered": changes}
    assert outbound["not_on_log"] == outbound["bodies_differing"] == []
    assert outbound["out_of_order"] == outbound["sequence_gaps"] == []
    assert outbound["bad_signatures"] == 0
    if not duplicates_allowed:
        assert outbound["duplicates"] == 0
    timed = outbound["timed"]
    assert timed["expected"] == TIMED
    assert timed["recorded_once"] == timed["delivered"] == TIMED, timed["customers"]
    assert outbound["causes"]["time"] == TIMED + outbound["time_changes_of_others"]


def test_the_host_holding_the_lease_killed_under_load_loses_nothing_and_hosts_agree(
    cluster_dir: Path,
):
    """The host whose projector holds the lease, killed: another host's projector takes over
    (the answers keep up), nothing acknowledged is lost, and every host answers alike."""
    report, done = run_cluster(
        cluster_dir,
        "--seconds", "20", "--rate", "60", "--query-rate", "20", "--drain", "40",
        "--fault", "kill-host", "--host", "lease", "--at", "8", "--for", "5",
    )  # fmt: skip
    fault = report["fault"]
    killed = fault["host"]
    # Taken over while the host was down, by another host.
    assert fault["lease_taken_by"] not in (None, killed), fault
    # The kill landed under load: the host was taken out and put back in.
    changes = [(name, state) for _, name, state in report["balancer_changes"]]
    assert (killed, "DOWN") in changes and changes[-1] == (killed, "UP"), changes
    assert fault["during"][f"direct{killed[-1]}"]["statuses"].get("200", 0) == 0
    assert_nothing_lost_none_twice_hosts_agree(report, sent=1200 + TIMED)
    # The time-driven changes fell while the host (and the projector holding the lease) was dead.
    assert report["outbound"]["timed"]["fell_in_fault_window"] == TIMED
    assert_each_change_delivered_and_each_time_driven_change_once(report, duplicates_allowed=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_postgres_stopped_under_load_webhooks_hear_503_within_2_s_then_all_recorded_once(
    cluster_dir: Path,
):
    """PostgreSQL stopped for 8 s under load: every webhook meanwhile is refused within 2 s
    (the engine's own answer, and HAProxy's once it took the hosts out), resident memory stays
    put, and once it is back every webhook is recorded, once, every change delivered, and each
    change by time that fell meanwhile recorded once and delivered."""
    report, done = run_cluster(
        cluster_dir,
        "--seconds", "16", "--rate", "50", "--query-rate", "10", "--drain", "40",
        "--fault", "stop-postgres", "--at", "5", "--for", "8",
    )  # fmt: skip
    during = report["fault"]["during"]
    assert {"lb", "direct1", "direct2", "direct3"} <= set(during), during
    for target, figures in during.items():
        assert set(figures["statuses"]) <= {"200", "503"}, (target, figures)
        assert figures["statuses"].get("503", 0) > 0, (target, figures)
        assert figures["not_2xx_max_ms"] < 2200, (target, figures)
    memory = report["fault"]["memory"]
    for host, before in memory["peak_mb_before"].items():
        assert memory["peak_mb_during"][host] < before + 50, memory
    assert_nothing_lost_none_twice_hosts_agree(report, sent=800 + TIMED)
    # Every time-driven change fell while PostgreSQL was down, and was applied once it was back.
    assert report["outbound"]["timed"]["fell_in_fault_window"] == TIMED
    # A POST answered while its outcome could not be recorded is sent again: at least once.
    assert_each_change_delivered_and_each_time_driven_change_once(report, duplicates_allowed=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_host_cut_off_the_network_under_load_loses_nothing_and_every_change_is_delivered(
    cluster_dir: Path,
):
    """app3's only link down for 8 s (`ip link set eth0 down`) under load, its server and its
    projector running but unreachable, and reaching neither PostgreSQL nor the endpoint: it is
    taken out and put back in, every webhook is recorded once, every change delivered, each
    change by time that fell meanwhile recorded once and delivered."""
    report, done = run_cluster(
        cluster_dir,
        "--seconds", "16", "--rate", "50", "--query-rate", "10", "--drain", "40",
        "--fault", "cut-network", "--host", "app3", "--at", "5", "--for", "8",
    )  # fmt: skip
    changes = [(name, state) for _, name, state in report["balancer_changes"]]
    assert ("app3", "DOWN") in changes and changes[-1] == ("app3", "UP"), changes
    assert_nothing_lost_none_twice_hosts_agree(report, sent=800 + TIMED)
    assert report["outbound"]["timed"]["fell_in_fault_window"] == TIMED
    assert_each_change_delivered_and_each_time_driven_change_once(report, duplicates_allowed=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_queries_read_a_hot_standby_and_the_apps_own_writes_are_read_at_once(cluster_dir: Path):
    """`[database] read_url` naming a streaming replica (made with pg_basebackup): the engine
    hosts' queries read it, and a `connect_stripe` answered by one host is seen at once by the
    next query, whichever host answers it."""
    report, done = run_cluster(
        cluster_dir, "--replica",
        "--seconds", "8", "--rate", "40", "--query-rate", "20", "--drain", "30",
    )  # fmt: skip
    replica = report["replica"]
    assert replica["standby_in_recovery"] is True
    assert replica["engine_connections_on_standby"] >= 3, replica  # each host's read pool
    ryw = replica["read_your_writes"]
    assert ryw["links"] == 40 and ryw["seen_at_once"] == 40, ryw
    assert_nothing_lost_none_twice_hosts_agree(report, sent=320 + TIMED)
    assert_each_change_delivered_and_each_time_driven_change_once(report, duplicates_allowed=False)
    assert done.returncode == 0, done.stderr[-3000:]
