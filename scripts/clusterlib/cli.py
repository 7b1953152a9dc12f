"""`scripts/cluster`: the command line.

    up        network namespaces, PostgreSQL, N engine hosts (each `serve` with its projector),
              HAProxy in front health-checking /healthz
    down      stop every process of the cluster and delete its namespaces (idempotent)
    status    what runs, and HAProxy's view of the engine hosts
    load      webhooks and queries through HAProxy, optionally with a fault in the middle, and
              customers whose answer changes by time alone during it; then the checks (nothing
              acknowledged lost, nothing recorded twice, hosts agree; every change delivered
              to the outbound endpoint at least once, in order; each time-driven change
              recorded once and delivered)
    fault     one fault now: kill-host NAME | restart-host NAME | stop-postgres | start-postgres |
              cut-network NAME | restore-network NAME
    report    the last load's report again
    run       up, load (with --fault), down, whatever happens; exit status 1 if a check failed
    capacity  webhooks/s and queries/s with 1, 2 and 3 engine hosts, CPU per request

`up` and `capacity` make a fresh, empty PostgreSQL unless given --pgdata DIR: an existing data
directory (e.g. the 10^7 events of scripts/bench_scale.py) started in place as the postgres user,
with one pg_hba.conf line added for the cluster's subnet, and never deleted; --dbname NAME its
database, --config-from FILE the engine configuration whose app (secrets, keys, catalogue) the
database holds. Then capacity's queries ask about that app's existing customers (a random sample
of the grants read model), not only new ones.

Everything is bounded: each load lasts --seconds, retries at most --drain more; `run` tears the
cluster down in `finally`, and `down` is safe to repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from clusterlib import checks, hosts, net
from clusterlib.cluster import Cluster, Sampler

FAULTS = ("kill-host", "stop-postgres", "cut-network")
# Seconds within which a webhook is refused while PostgreSQL is down: the engine's
# webhook_write_timeout (2 s) and the way there and back.
REFUSAL_BOUND = 2.2
NO_OUTBOUND = "no outbound endpoint (and so no time-driven customers in a load)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=hosts.DEFAULT_DIR,
        help="logs, data, reports (default %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up")
    up.add_argument("--apps", type=int, default=3, help="engine hosts (default 3)")
    up.add_argument("--replica", action="store_true", help="queries read a hot standby")
    up.add_argument("--no-outbound", action="store_true", help=NO_OUTBOUND)
    existing_database_options(up)
    sub.add_parser("down")
    sub.add_parser("status")
    sub.add_parser("report")
    for name in ("load", "run"):
        p = sub.add_parser(name)
        if name == "run":
            p.add_argument("--apps", type=int, default=3)
            p.add_argument("--replica", action="store_true", help="queries read a hot standby")
            p.add_argument("--no-outbound", action="store_true", help=NO_OUTBOUND)
        load_options(p)
    fault = sub.add_parser("fault")
    fault.add_argument(
        "kind",
        choices=(
            "kill-host",
            "restart-host",
            "stop-postgres",
            "start-postgres",
            "cut-network",
            "restore-network",
        ),
    )
    fault.add_argument("host", nargs="?", default="app2")
    cap = sub.add_parser("capacity")
    cap.add_argument("--seconds", type=float, default=10.0)
    cap.add_argument("--hosts", default="1,2,3")
    cap.add_argument("--connections", type=int, default=32)
    cap.add_argument(
        "--outbound",
        action="store_true",
        help="with the outbound endpoint (every change also sent): not in the figures of "
        "docs/deploy.md",
    )
    existing_database_options(cap)
    cap.add_argument(
        "--query-sample",
        type=int,
        default=100_000,
        help="with --pgdata: existing customers the queries pick from (default %(default)s)",
    )
    args = parser.parse_args(argv)

    if args.command != "report" and (why := net.can_make_namespaces()):
        print(f"scripts/cluster: {why}", file=sys.stderr)
        return 2
    if args.command in ("up", "run", "capacity") and (busy := net.namespaces()):
        # Another cluster (maybe another checkout's) is up: the namespaces' names are the
        # machine's. Refuse before making anything, so that the teardown on failure below
        # cannot take down what this invocation did not make.
        print(
            f"scripts/cluster: a cluster is up already ({', '.join(busy)}): "
            "`scripts/cluster down` first if it is yours",
            file=sys.stderr,
        )
        return 2
    if getattr(args, "pgdata", None) and (why := hosts.unusable_pgdata(args.pgdata)):
        print(f"scripts/cluster: --pgdata {args.pgdata}: {why}", file=sys.stderr)
        return 2
    if args.command == "up":
        cluster = Cluster(
            args.dir, args.apps, args.replica, not args.no_outbound,
            args.pgdata, args.dbname, args.config_from,
        )  # fmt: skip
    elif args.command == "run":
        cluster = Cluster(args.dir, args.apps, args.replica, not args.no_outbound)
    else:
        cluster = Cluster.existing(args.dir)
    if args.command == "load" and cluster.pgdata:
        print(
            "scripts/cluster: `load` checks the whole event log: not on a --pgdata cluster "
            "(`capacity --pgdata` measures one)",
            file=sys.stderr,
        )
        return 2
    if args.command == "up":
        try:
            cluster.up()
        except BaseException:
            cluster.down()
            raise
        return 0
    if args.command == "down":
        cluster.down()
        return 0
    if args.command == "status":
        print(
            json.dumps(
                {
                    "namespaces": net.namespaces(),
                    "haproxy": hosts.haproxy_servers(cluster.haproxy_sock),
                },
                indent=2,
            )
        )
        return 0
    if args.command == "report":
        latest = sorted(args.dir.glob("report-*.json"))
        if not latest:
            print("no report yet", file=sys.stderr)
            return 1
        print(latest[-1].read_text())
        return 0
    if args.command == "fault":
        return do_fault(cluster, args.kind, args.host)
    if args.command == "load":
        return 0 if load(cluster, args)["passed"] else 1
    if args.command == "run":
        if net.namespaces():  # someone else's cluster: `down` below would tear it down
            print(f"scripts/cluster: a cluster is up already ({', '.join(net.namespaces())})")
            return 2
        try:
            cluster.up()
            return 0 if load(cluster, args)["passed"] else 1
        finally:
            cluster.down()
    if args.command == "capacity":
        return capacity(args)
    return 2


def existing_database_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pgdata",
        type=Path,
        help="an existing PostgreSQL data directory, used in place (never deleted) instead of "
        "a fresh database",
    )
    p.add_argument("--dbname", default="postgres", help="the database (default %(default)s)")
    p.add_argument(
        "--config-from",
        type=Path,
        help="an engine configuration file whose [apps.*] section the hosts serve (the app the "
        "--pgdata database was made for)",
    )


def load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=20.0, help="length of the schedule")
    p.add_argument("--rate", type=float, default=100.0, help="webhooks/s offered")
    p.add_argument("--query-rate", type=float, default=50.0, help="permission queries/s")
    p.add_argument(
        "--drain",
        type=float,
        default=60.0,
        help="seconds after the schedule during which failed webhooks are retried",
    )
    p.add_argument("--fault", choices=FAULTS)
    p.add_argument(
        "--host",
        default="app2",
        help="the engine host the fault hits; `lease`: the one whose projector is active then",
    )
    p.add_argument("--at", type=float, default=8.0, help="seconds into the schedule")
    p.add_argument(
        "--for",
        dest="duration",
        type=float,
        default=6.0,
        help="seconds before the host is restarted / PostgreSQL started / the network restored",
    )
    p.add_argument(
        "--direct-every",
        type=int,
        default=10,
        help="every Nth webhook's first attempt goes straight to an engine host",
    )
    p.add_argument(
        "--timed",
        type=int,
        default=12,
        help="customers whose answer changes by time alone, at instants spread over the fault "
        "window (--at to --at + --for); 0: none (default %(default)s)",
    )
    p.add_argument("--json", type=Path, help="also write the report here")


def do_fault(cluster: Cluster, kind: str, host: str) -> int:
    if kind == "kill-host":
        print(f"killed {host}: pids {cluster.kill_host(host)}")
    elif kind == "restart-host":
        cluster.restart_host(host)
    elif kind == "stop-postgres":
        cluster.stop_postgres()
    elif kind == "start-postgres":
        cluster.start_postgres()
    elif kind == "cut-network":
        cluster.cut(host, up=False)
    elif kind == "restore-network":
        cluster.cut(host, up=True)
    return 0


def client_process(cluster: Cluster, spec: dict[str, Any]) -> subprocess.Popen[str]:
    path = cluster.home / f"client-{time.time_ns()}.json"
    spec = {
        "secret": cluster.app.secret,
        "app_id": cluster.app.app_id,
        "rest_key": cluster.app.rest_key,
        "project_root": str(hosts.PROJECT_ROOT),
        "target": list(cluster.lb_target),
        **spec,
    }
    path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": str(hosts.SCRIPTS_DIR)}
    argv = net.in_netns(
        net.SWITCH, [str(hosts.VENV_BIN / "python"), "-m", "clusterlib.load", str(path)]
    )
    return subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        cwd=hosts.PROJECT_ROOT,
        start_new_session=True,
    )


class FaultPlan(threading.Thread):
    """Does the fault `at` seconds after the client's clock starts, undoes it `duration` later,
    and notes when each step happened."""

    def __init__(self, cluster: Cluster, kind: str, host: str, at: float, duration: float):
        super().__init__(daemon=True, name="fault")
        self.cluster, self.kind, self.host = cluster, kind, host
        self.at, self.duration = at, duration
        self.started = threading.Event()
        self.start_epoch = 0.0
        self.times: dict[str, float] = {}
        self.lease_taken_by: str | None = None
        self.error: BaseException | None = None

    def begin(self, start_epoch: float) -> None:
        self.start_epoch = start_epoch
        self.start()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as error:
            self.error = error

    def _sleep_until(self, offset: float) -> None:
        time.sleep(max(0.0, self.start_epoch + offset - time.time()))

    def _run(self) -> None:
        c = self.cluster
        self._sleep_until(self.at)
        holder = c.lease_holder()
        if self.host == "lease":
            self.host = holder or "app1"
        self.times["fault"] = time.time()
        if self.kind == "kill-host":
            c.kill_host(self.host)
        elif self.kind == "stop-postgres":
            c.stop_postgres()
        elif self.kind == "cut-network":
            c.cut(self.host, up=False)
        self.times["fault_done"] = time.time()
        if self.kind != "stop-postgres" and holder == self.host:
            self._watch_takeover()
        self._sleep_until(self.at + self.duration)
        self.times["restore"] = time.time()
        if self.kind == "kill-host":
            c.restart_host(self.host)
        elif self.kind == "stop-postgres":
            c.start_postgres()
        elif self.kind == "cut-network":
            c.cut(self.host, up=True)
        self.times["restore_done"] = time.time()
        names = {h.name for h in c.app_hosts}
        c.wait_balanced(names, timeout=90)
        self.times["all_up_in_haproxy"] = time.time()

    def _watch_takeover(self) -> None:
        """Until the fault is undone: when another host's projector took the lease over."""
        while time.time() < self.start_epoch + self.at + self.duration:
            holder = self.cluster.lease_holder(skip=self.host)
            if holder is not None:
                self.times["lease_taken"] = time.time()
                self.lease_taken_by = holder
                return
            time.sleep(0.1)


def load(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    """A load run, its fault, its checks; prints and saves the report."""
    direct = [[h.address, hosts.ENGINE_PORT] for h in cluster.app_hosts]
    spec = {
        "seconds": args.seconds,
        "webhook_rate": args.rate,
        "query_rate": args.query_rate,
        "drain_seconds": args.drain,
        "direct": direct,
        "direct_every": args.direct_every,
        "out": str(cluster.home / f"load-{time.time_ns()}.json"),
        "timed": timed_instants(args.timed, args.at, args.duration) if cluster.outbound else [],
    }
    plan = FaultPlan(cluster, args.fault, args.host, args.at, args.duration) if args.fault else None
    cpu_before = host_cpu(cluster)
    with Sampler(cluster) as sampler:
        client = client_process(cluster, spec)
        try:
            line = client.stdout.readline() if client.stdout else ""
            start_epoch = float(line.split()[1]) if line.startswith("start") else time.time()
            if plan:
                plan.begin(start_epoch)
            client.wait(timeout=args.seconds + args.drain + 120)
        finally:
            if client.poll() is None:
                hosts.kill_session(client.pid, wait=2)
        if plan:
            plan.join(timeout=120)
            if plan.error:
                raise plan.error
        for host in cluster.app_hosts:  # all back, and caught up, before the checks
            hosts.wait_healthy(host, timeout=90)
        if client.returncode != 0:
            raise RuntimeError(f"the load client failed (exit {client.returncode})")
        result = json.loads(Path(spec["out"]).read_text())
        outbound_wait = None
        if cluster.outbound:  # every change sent, every time-driven instant passed
            outbound_wait = checks.outbound_settled(
                cluster.pg.sql, cluster.received, result["timed"]
            )
        settled = time.time()
    report = build_report(
        cluster, args, result, plan, sampler.samples, cpu_before, settled, outbound_wait
    )
    save(cluster, report, args.json)
    return report


def timed_instants(count: int, at: float, duration: float) -> list[float]:
    """`count` instants (seconds after the start) spread evenly over the fault window, from a
    second after the fault to a second before it is undone (the client rounds each up to a
    whole second: Stripe's times are whole seconds)."""
    first, last = at + 1, at + max(1, duration - 1)
    if count <= 1:
        return [first] * count
    return [round(first + i * (last - first) / (count - 1), 2) for i in range(count)]


def outbound_report(result, plan, wait, seen) -> tuple[dict[str, Any], list[str]]:
    """The outbound figures (the change log against the receiver's record) and what failed."""
    figures = checks.outbound_figures(
        seen["changes"], seen["got"], result["timed"], seen["statuses"]
    )
    figures["settle"] = wait
    start = result["start_epoch"]
    for row in figures["timed"]["customers"]:
        row["at_s"] = round(row["at"] - start, 2)  # seconds after the start, as the fault's
    if plan and figures["timed"]["customers"]:
        begin, end = plan.times["fault_done"], plan.times["restore"]
        instants = [row["at"] for row in figures["timed"]["customers"]]
        figures["timed"]["fell_in_fault_window"] = sum(1 for t in instants if begin <= t < end)
    return figures, checks.outbound_failures(figures, wait, faulted=plan is not None)


def host_cpu(cluster: Cluster) -> dict[str, float]:
    found = {h.name: hosts.cpu_seconds(net.pids_in(h.netns)) for h in cluster.app_hosts}
    found["postgresql"] = hosts.cpu_seconds(net.pids_in(net.DB.netns))
    found["haproxy"] = hosts.cpu_seconds(net.pids_in(net.LB.netns))
    return found


def build_report(
    cluster, args, result, plan, samples, cpu_before, settled, outbound_wait=None
) -> dict[str, Any]:
    stored, changes = checks.read_log(cluster.pg.local_url)
    if outbound_wait is not None:  # now, before the checks below make changes of their own
        seen = {
            "changes": changes,
            "got": checks.received(cluster.received),
            "statuses": dict(
                cluster.pg.sql("SELECT status, count(*) FROM deliveries GROUP BY status")
            ),
        }
    webhooks = checks.webhook_figures(result, stored)
    sample = result["customids"][:: max(1, len(result["customids"]) // 100)][:100]
    agree = checks.agreement(cluster.app_hosts, sample)
    cpu_after = host_cpu(cluster)
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "hosts": len(cluster.app_hosts),
        "offered": {
            "seconds": args.seconds,
            "webhooks_per_s": args.rate,
            "queries_per_s": args.query_rate,
            "drain_s": args.drain,
        },
        "webhooks": webhooks,
        "queries": checks.query_figures(result),
        "hosts_agree": agree,
        # None: the host was restarted meanwhile (its processes' CPU time went with them)
        "cpu_seconds": {
            k: round(d, 2) if (d := cpu_after.get(k, 0) - v) >= 0 and not plan else None
            for k, v in cpu_before.items()
        },
        "balancer_changes": checks.balancer_changes(samples, result["start_epoch"]),
        "timeline": checks.timeline(result),
    }
    if plan:
        t = plan.times
        report["fault"] = {
            "kind": plan.kind,
            "host": plan.host if plan.kind != "stop-postgres" else "db",
            "at_s": round(t["fault"] - result["start_epoch"], 2),
            "restored_at_s": round(t["restore"] - result["start_epoch"], 2),
            "all_up_in_haproxy_at_s": round(t["all_up_in_haproxy"] - result["start_epoch"], 2),
            "during": checks.window(result, t["fault"], t["restore"]),
            "memory": checks.memory(samples, t["fault"], t["restore"] + 1),
        }
        if "lease_taken" in t:  # the host hit held the projector's lease
            report["fault"]["lease_taken_over_after_s"] = round(t["lease_taken"] - t["fault"], 2)
            report["fault"]["lease_taken_by"] = plan.lease_taken_by
    report["settled_after_s"] = round(settled - result["start_epoch"], 2)
    if cluster.replica:
        report["replica"] = replica_figures(cluster, result)
    failures = []
    if webhooks["lost"]:
        failures.append(f"{len(webhooks['lost'])} acknowledged webhooks lost")
    if webhooks["recorded_twice"]:
        failures.append(f"{len(webhooks['recorded_twice'])} webhooks recorded twice")
    if webhooks["never_acknowledged"]:
        failures.append(
            f"{webhooks['never_acknowledged']} webhooks never acknowledged (retries ran out)"
        )
    ryw = report.get("replica", {}).get("read_your_writes")
    if ryw and ryw["seen_at_once"] != ryw["links"]:
        failures.append(f"read-your-writes broken: {ryw['missing']}")
    if not agree["agreed"]:
        failures.append(f"hosts disagree: {agree['example']}")
    if outbound_wait is not None:
        report["outbound"], failed = outbound_report(result, plan, outbound_wait, seen)
        failures += failed
    if plan and plan.kind == "stop-postgres":
        slowest = max(
            (w["not_2xx_max_ms"] for w in report["fault"]["during"].values()), default=0.0
        )
        if slowest > REFUSAL_BOUND * 1000:
            failures.append(f"a refusal took {slowest:.0f} ms while PostgreSQL was down")
    report["failures"] = failures
    report["passed"] = not failures
    return report


def replica_figures(cluster: Cluster, result: dict[str, Any]) -> dict[str, Any]:
    """Whether the queries really read the standby, how far behind it is, and read-your-writes
    for the app's own writes (connect_stripe) across hosts."""
    engines = ", ".join(f"'{h.address}'" for h in cluster.app_hosts)
    reads = cluster.standby.sql(
        f"SELECT count(*) FROM pg_stat_activity WHERE client_addr IN ({engines})"
    )[0][0]
    commits = cluster.standby.sql("SELECT sum(xact_commit) FROM pg_stat_database")[0][0]
    lag = cluster.standby.sql(
        "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), "
        "pg_is_in_recovery()"
    )[0]
    return {
        "engine_connections_on_standby": reads,
        "standby_transactions": int(commits or 0),
        "standby_replay_behind_bytes": int(lag[0] or 0),
        "standby_in_recovery": lag[1],
        "read_your_writes": checks.read_your_writes(result.get("customers", [])),
    }


def save(cluster: Cluster, report: dict[str, Any], extra: Path | None) -> None:
    text = json.dumps(report, indent=2)
    (cluster.home / f"report-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(text)
    if extra:
        extra.write_text(text)
    summary = {k: v for k, v in report.items() if k != "timeline"}
    print(json.dumps(summary, indent=2))


def capacity(args: argparse.Namespace) -> int:
    """For each host count: webhooks closed loop, then queries closed loop; CPU per request."""
    rows = []
    for count in [int(n) for n in args.hosts.split(",")]:
        cluster = Cluster(
            args.dir, count, outbound=args.outbound, pgdata=args.pgdata, dbname=args.dbname,
            config_from=args.config_from,
        )  # fmt: skip
        try:
            cluster.up()
            rows.append(measure(cluster, count, args))
        finally:
            cluster.down()
    text = json.dumps(rows, indent=2)
    name = "ent-cluster-capacity-pgdata.json" if args.pgdata else "ent-cluster-capacity.json"
    (args.dir.parent / name).write_text(text)
    print(text)
    return 0


def primary_commits(cluster: Cluster) -> int:
    rows = cluster.pg.sql("SELECT sum(xact_commit) FROM pg_stat_database")
    return int(rows[0][0] or 0)


def database_figures(cluster: Cluster) -> dict[str, Any]:
    """How big the database is: its event log, the app's customers in the grants read model."""
    generation = cluster.pg.sql(
        "SELECT generation FROM projection_generations WHERE name = 'buyer_read_models'"
    )
    live = generation[0][0] if generation else 1
    table = "customer_grants" + (f"_g{live}" if live > 1 else "")  # projections.generations
    events = cluster.pg.sql("SELECT coalesce(max(notification_id), 0) FROM entitlements_events")
    customers = cluster.pg.sql(
        f"SELECT count(*) FROM {table} WHERE app_id = %s", (cluster.app.app_id,)
    )
    return {"table": table, "events": events[0][0], "customers": customers[0][0]}


def existing_customids(cluster: Cluster, table: str, customers: int, sample: int) -> list[str]:
    """About `sample` customids of the app picked at random from the whole grants table."""
    percent = min(100.0, 100.0 * sample / max(1, customers))
    rows = cluster.pg.sql(
        f"SELECT customid FROM {table} TABLESAMPLE BERNOULLI ({percent}) WHERE app_id = %s",
        (cluster.app.app_id,),
    )
    return [r[0] for r in rows][:sample]


def measure(cluster: Cluster, count: int, args: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"hosts": count}
    sample: list[str] = []
    if cluster.pgdata:
        row["database"] = database_figures(cluster)
        sample = existing_customids(
            cluster, row["database"]["table"], row["database"]["customers"], args.query_sample
        )
        row["database"]["queried_customers"] = len(sample)
        if not sample:
            raise RuntimeError(f"no customer of app {cluster.app.app_id} in {row['database']}")
    for kind in ("webhooks", "queries"):
        spec: dict[str, Any] = {
            "seconds": args.seconds,
            "closed_connections": args.connections,
            "drain_seconds": 10.0,
            "query_rate": 0,
            "out": str(cluster.home / f"cap-{kind}.json"),
        }
        if kind == "webhooks":
            spec["webhook_rate"] = 3000  # sizes the stream: more than can be sent
        else:
            spec.update(queries_only=True, preload=600, webhook_rate=1)
            if sample:  # the existing customers instead of 600 new ones
                spec.update(preload=0, query_customids=sample)
        client = client_process(cluster, spec)
        line = client.stdout.readline() if client.stdout else ""
        before = host_cpu(cluster)
        commits_before = primary_commits(cluster)
        client.wait(timeout=args.seconds + 180)
        after = host_cpu(cluster)
        commits = primary_commits(cluster) - commits_before
        result = json.loads(Path(spec["out"]).read_text())
        statuses = (
            [a[2] for a in result["attempts"]]
            if kind == "webhooks"
            else [q[2] for q in result["queries"]]
        )
        elapsed = result["elapsed"]
        ok = sum(1 for s in statuses if 200 <= s < 300)
        engines = sum(after[h.name] - before[h.name] for h in cluster.app_hosts)
        row[kind] = {
            "ok": ok,
            "not_ok": len(statuses) - ok,
            "seconds": round(elapsed, 2),
            "per_s": round(ok / elapsed, 1) if elapsed else 0,
            "engine_cpu_s": round(engines, 2),
            "engine_cpu_ms_per_request": round(1000 * engines / ok, 3) if ok else None,
            "postgresql_cpu_s": round(after["postgresql"] - before["postgresql"], 2),
            "haproxy_cpu_s": round(after["haproxy"] - before["haproxy"], 2),
            "primary_transactions_per_request": round(commits / ok, 3) if ok else None,
            "client_started": line.strip(),
        }
    return row
