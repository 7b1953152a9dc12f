"""Bringing the cluster up and down, and the faults done to it."""

from __future__ import annotations

import contextlib
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterlib import hosts, net
from clusterlib.hosts import LB_PORT


@dataclass
class Cluster:
    home: Path = hosts.DEFAULT_DIR
    apps: int = 3
    replica: bool = False  # a hot standby the engine hosts' queries read ([database] read_url)
    outbound: bool = True  # an endpoint (clusterlib.receiver) every change is sent to
    # An existing PostgreSQL data directory used in place of a fresh one (never deleted), the
    # database there, and the engine configuration whose app the hosts serve (--config-from).
    pgdata: Path | None = None
    dbname: str = "postgres"
    config_from: Path | None = None

    def __post_init__(self) -> None:
        if self.pgdata is not None:
            self.pgdata = self.pgdata.resolve()
            if self.pgdata.is_relative_to(self.home.resolve()):
                raise SystemExit(f"--pgdata {self.pgdata} is inside {self.home}: `up` empties it")
            if self.replica:
                raise SystemExit("--replica copies the primary: not with --pgdata")
        self.app = hosts.App.from_config(self.config_from) if self.config_from else hosts.App()
        self.pg = hosts.Postgres(self.home / "db", net.DB, self.pgdata, self.dbname)
        self.standby = hosts.Postgres(self.home / "replica", net.REPLICA)
        self.haproxy_sock = self.home / "haproxy.sock"
        self.received = self.home / "received.jsonl"  # the receiver's record, a line a POST

    @classmethod
    def existing(cls, home: Path) -> Cluster:
        """The cluster `up` made in `home` (its shape from state.json)."""
        state = hosts.read_state(home)
        pgdata, config_from = state.get("pgdata"), state.get("config_from")
        return cls(
            home,
            state.get("apps", 3),
            state.get("replica", False),
            state.get("outbound", False),
            Path(pgdata) if pgdata else None,
            state.get("dbname", "postgres"),
            Path(config_from) if config_from else None,
        )

    @property
    def app_hosts(self) -> list[net.Host]:
        return [net.app_host(n) for n in range(1, self.apps + 1)]

    def host(self, name: str) -> net.Host:
        for host in self.app_hosts:
            if host.name == name:
                return host
        raise SystemExit(f"no engine host {name!r}: {[h.name for h in self.app_hosts]}")

    @property
    def lb_target(self) -> tuple[str, int]:
        return (net.LB.address, LB_PORT)

    # --- up / down -------------------------------------------------------------------------

    def up(self, log=print) -> None:
        if net.namespaces():
            raise SystemExit(
                f"a cluster is up already ({', '.join(net.namespaces())}): "
                "`scripts/cluster down` first"
            )
        hosts.pg_bin()
        hosts.haproxy_bin()
        if self.home.exists():  # a fresh database each time (unless --pgdata); earlier logs go too
            shutil.rmtree(self.home)
        self.home.mkdir(parents=True)
        state = {
            "apps": self.apps,
            "replica": self.replica,
            "outbound": self.outbound,
            "pgdata": str(self.pgdata) if self.pgdata else None,
            "dbname": self.dbname,
            "config_from": str(self.config_from.resolve()) if self.config_from else None,
            "up_since": time.time(),
        }
        hosts.write_state(self.home, state)
        started = time.monotonic()
        net.make_switch()
        extra = [*([net.REPLICA] if self.replica else []), *([net.HOOKS] if self.outbound else [])]
        for host in [net.LB, net.DB, *self.app_hosts, *extra]:
            net.make_host(host)
        log(f"network: {net.SUBNET}.0/24, namespaces {', '.join(net.namespaces())}")
        self.pg.init()
        self.pg.start()
        log(f"postgresql: {self.pg.url} (data {self.pg.data})")
        read_url = None
        if self.replica:
            self.standby.init_standby(self.pg)
            self.standby.start()
            read_url = self.standby.url
            log(f"hot standby: {read_url} (pg_basebackup -R of the primary)")
        endpoint = None
        if self.outbound:
            hosts.start_receiver(self.home, self.received)
            endpoint = hosts.receiver_url()
            log(f"outbound endpoint: {endpoint} (every change; record {self.received})")
        for host in self.app_hosts:
            config = self.home / f"{host.name}.toml"
            hosts.engine_config(config, self.pg.url, host, read_url, endpoint, self.app)
        # The first host creates the tables; the others then start together.
        self.start_engine(self.app_hosts[0])
        hosts.wait_healthy(self.app_hosts[0], self.home / f"{self.app_hosts[0].name}.log")
        for host in self.app_hosts[1:]:
            self.start_engine(host)
        for host in self.app_hosts[1:]:
            hosts.wait_healthy(host, self.home / f"{host.name}.log")
        config = hosts.haproxy_config(self.home / "haproxy.cfg", self.app_hosts, self.haproxy_sock)
        hosts.start_haproxy(self.home, config)
        self.wait_balanced(set(h.name for h in self.app_hosts))
        log(f"engine hosts: {', '.join(f'{h.name} {h.address}:8000' for h in self.app_hosts)}")
        log(
            f"haproxy: http://{net.LB.address}:{LB_PORT} (in {net.SWITCH}: "
            f"ip netns exec {net.SWITCH} curl ...); up in {time.monotonic() - started:.1f} s"
        )

    def start_engine(self, host: net.Host) -> None:
        hosts.start_engine(self.home, host)

    def wait_balanced(self, names: set[str], timeout: float = 30.0) -> float:
        """Seconds until HAProxy sees exactly `names` UP."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            status = hosts.haproxy_servers(self.haproxy_sock)
            if {n for n, s in status.items() if s.startswith("UP")} == names:
                return time.monotonic() - start
            time.sleep(0.1)
        raise RuntimeError(
            f"HAProxy never saw {sorted(names)} UP: {hosts.haproxy_servers(self.haproxy_sock)}"
        )

    def down(self, log=print) -> None:
        """Stop everything and delete the namespaces; safe to run any number of times."""
        made = net.namespaces()
        for server in (self.standby, self.pg):
            server.stop("fast")
        for netns in made:  # only processes inside namespaces this script made
            for pid in net.pids_in(netns):
                with contextlib.suppress(ProcessLookupError):
                    hosts.os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(net.pids_in(n) for n in made):
            time.sleep(0.1)
        for netns in made:
            hosts.kill_namespace(netns)
        gone = net.delete_all()
        left = net.namespaces()
        log(
            f"down: deleted {', '.join(gone) or 'nothing'}"
            + (f"; LEFT {', '.join(left)}" if left else "")
        )

    # --- faults ----------------------------------------------------------------------------

    def lease_holder(self, skip: str | None = None) -> str | None:
        """The host whose projector holds the lease (its /metrics says so), if one answers."""
        for host in self.app_hosts:
            if host.name != skip and hosts.projector_active(host):
                return host.name
        return None

    def kill_host(self, name: str) -> list[int]:
        return hosts.kill_namespace(self.host(name).netns)

    def restart_host(self, name: str) -> None:
        self.start_engine(self.host(name))

    def stop_postgres(self) -> None:
        self.pg.stop("fast")

    def start_postgres(self) -> None:
        self.pg.start()

    def cut(self, name: str, up: bool) -> None:
        net.set_link(self.host(name), up)


@dataclass
class Sampler:
    """Every `every` seconds: each engine host's RSS, HAProxy's view of the hosts."""

    cluster: Cluster
    every: float = 0.25
    samples: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = {
                h.name: round(hosts.rss_mb(net.pids_in(h.netns)), 1) for h in self.cluster.app_hosts
            }
            lb = hosts.haproxy_servers(self.cluster.haproxy_sock)
            self.samples.append({"t": time.time(), "rss_mb": rss, "lb": lb})
            self._stop.wait(self.every)
