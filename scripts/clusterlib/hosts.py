"""The cluster's hosts and their processes: PostgreSQL, engine hosts, HAProxy.

Every process is started inside its host's namespace (`ip netns exec`), in a session of its own,
with its output in a log file of the cluster's directory. `state.json` there names what runs, so
that `down` (idempotent) finds everything again from another invocation.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from clusterlib import net

SCRIPTS_DIR = Path(__file__).resolve().parent.parent
PROJECT_ROOT = SCRIPTS_DIR.parent
VENV_BIN = PROJECT_ROOT / ".venv" / "bin"
DEFAULT_DIR = Path("/tmp/ent-cluster")

APP_ID = "demo"
SECRET = "whsec_cluster_secret_do_not_use_in_production"
REST_KEY = "cluster-rest-key"
OUTBOUND_SECRET = "whsec_cluster_outbound_do_not_use_in_production"
RECEIVER_PORT = 9000
RECEIVER_DELAY = 0.2  # seconds the endpoint takes to answer (clusterlib.receiver)
ENGINE_PORT = 8000
LB_PORT = 8080
PG_PORT = 5432
CLONE_NEWNET = 0x40000000


# --- Running code inside a namespace ----------------------------------------------------------


def in_netns(netns: str, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a thread that joined `netns` first (setns is per thread): its sockets are
    that namespace's. The thread ends with fn; the caller's namespace never changes."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            result["value"] = fn(*args)
        except BaseException as error:  # handed to the caller
            result["error"] = error

    thread = threading.Thread(target=target, name=f"in-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def http_get(url: str, timeout: float = 2.0, key: bool = False) -> tuple[int, bytes]:
    """GET from the switch's namespace; (status, body), (0, b"") when nothing answered."""

    def get() -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {REST_KEY}"} if key else {}
        try:
            response = httpx.get(url, timeout=timeout, headers=headers)
        except httpx.HTTPError:
            return 0, b""
        return response.status_code, response.content

    return in_netns(net.SWITCH, get)


# --- Processes ----------------------------------------------------------------------------------


def spawn(netns: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    with log.open("ab") as out:
        process = subprocess.Popen(
            net.in_netns(netns, argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=PROJECT_ROOT,
            env=env,
        )
    return process.pid


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_session(pid: int, sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
    """Signal the process group a spawned process leads; SIGKILL what is left after `wait`."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def kill_namespace(netns: str) -> list[int]:
    """SIGKILL every process in a namespace: the host is gone, all at once."""
    pids = net.pids_in(netns)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


# --- PostgreSQL ------------------------------------------------------------------------------


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[4]))
    if not found and os.geteuid() == 0:
        apt_install("postgresql")
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL's server binaries are missing (Debian: postgresql)")
    return Path(found[-1])


def apt_install(package: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", package], check=True, env=env, capture_output=True
    )


def haproxy_bin() -> str:
    found = shutil.which("haproxy")
    if found is None and os.geteuid() == 0:
        apt_install("haproxy")
        found = shutil.which("haproxy")
    if found is None:
        raise RuntimeError("HAProxy is missing (Debian: apt-get install haproxy)")
    return found


def unusable_pgdata(data: Path) -> str | None:
    """Why an existing data directory cannot be the cluster's (checked before anything is made:
    `down` after a failed `up` would otherwise stop a server someone else runs on it)."""
    if not (data / "PG_VERSION").is_file():
        return "not a PostgreSQL data directory (no PG_VERSION)"
    if (data / "postmaster.pid").exists():
        return "in use (postmaster.pid): stop its server first"
    return None


def as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv]


class Postgres:
    """One server on a host of its own; its Unix socket (in the cluster directory) lets checks
    from the root namespace read it without a network.

    `data`: an existing data directory used in place (`scripts/cluster up --pgdata`) instead of a
    fresh one in `home`: never initialised, never deleted (only `home`, with the socket and the
    log, is the cluster's); `dbname`: the database the engine hosts use there."""

    def __init__(
        self, home: Path, host: net.Host, data: Path | None = None, dbname: str = "postgres"
    ) -> None:
        self.home, self.host, self.dbname = home, host, dbname
        self.existing = data is not None
        self.data = data if data is not None else home / "data"
        self.sock, self.log = home / "sock", home / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host.address}:{PG_PORT}/{self.dbname}"

    @property
    def local_url(self) -> str:
        return f"postgresql://postgres@/{self.dbname}?host={self.sock}&port={PG_PORT}"

    def init(self) -> None:
        bin_dir = pg_bin()
        self.home.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        if self.existing:
            shutil.chown(self.home, "postgres", "postgres")
            shutil.chown(self.sock, "postgres", "postgres")
            self.adopt(bin_dir)
            return
        if not (self.data / "PG_VERSION").exists():
            self.data.mkdir(mode=0o700, exist_ok=True)
            shutil.chown(self.home, "postgres", "postgres")
            for path in (self.data, self.sock):
                shutil.chown(path, "postgres", "postgres")
            subprocess.run(
                as_postgres(
                    [
                        str(bin_dir / "initdb"),
                        "-D",
                        str(self.data),
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "-E",
                        "UTF8",
                    ]
                ),
                check=True,
                capture_output=True,
            )
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {net.SUBNET}.0/24 trust\n")
                hba.write(f"host replication all {net.SUBNET}.0/24 trust\n")

    def adopt(self, bin_dir: Path) -> None:
        """Checks that an existing data directory can be started as it is by the postgres user
        with these binaries, and lets the cluster's subnet in (one pg_hba.conf line, added once;
        the only change made to it besides what the server itself writes)."""
        version = (self.data / "PG_VERSION").read_text().strip()
        if version != bin_dir.parent.name:
            raise RuntimeError(f"{self.data} is PostgreSQL {version}; the binaries are {bin_dir}")
        owner = self.data.stat().st_uid
        if owner != pwd.getpwnam("postgres").pw_uid:
            raise RuntimeError(
                f"{self.data} is not the postgres user's: chown -R postgres:postgres {self.data}"
            )
        if why := unusable_pgdata(self.data):
            raise RuntimeError(f"{self.data}: {why}")
        hba = self.data / "pg_hba.conf"
        line = f"host all all {net.SUBNET}.0/24 trust"
        if line not in hba.read_text().splitlines():
            with hba.open("a") as out:
                out.write(f"# scripts/cluster: its engine hosts\n{line}\n")

    def init_standby(self, primary: Postgres) -> None:
        """A streaming replica of `primary` (hot standby), from a base backup taken over the
        network from the standby's own namespace."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.sock.mkdir(exist_ok=True)
        for path in (self.home, self.sock):
            shutil.chown(path, "postgres", "postgres")
        subprocess.run(
            net.in_netns(self.host.netns, as_postgres([
                str(pg_bin() / "pg_basebackup"), "-h", primary.host.address, "-p", str(PG_PORT),
                "-U", "postgres", "-D", str(self.data), "-R", "-X", "stream", "-c", "fast",
            ])),
            check=True, capture_output=True,
        )  # fmt: skip
        self.data.chmod(0o700)

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        """One statement over the Unix socket (root namespace, no network)."""
        import psycopg

        with psycopg.connect(self.local_url, autocommit=True, connect_timeout=3) as conn:
            return conn.execute(statement, params).fetchall()

    def start(self) -> None:
        options = (
            f"-c listen_addresses={self.host.address} -p {PG_PORT} "
            f"-c unix_socket_directories={self.sock} -c max_connections=300 -c fsync=on "
            "-c wal_level=replica -c max_wal_senders=5 -c hot_standby=on"
        )
        subprocess.run(
            net.in_netns(
                self.host.netns,
                as_postgres(
                    [
                        str(pg_bin() / "pg_ctl"),
                        "-D",
                        str(self.data),
                        "-l",
                        str(self.log),
                        "-w",
                        "-o",
                        options,
                        "start",
                    ]
                ),
            ),
            check=True,
            capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        subprocess.run(
            as_postgres([str(pg_bin() / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]),
            check=False,
            capture_output=True,
        )


# --- Engine hosts and HAProxy ----------------------------------------------------------------


@dataclass(frozen=True)
class App:
    """The one app the engine hosts serve, and what the load client signs and asks with."""

    app_id: str = APP_ID
    secret: str = SECRET
    rest_key: str = REST_KEY
    settings: tuple[tuple[str, Any], ...] = (
        ("grace_period", "P3D"),
        ("renewal_leeway", "P1D"),
        ("refund_policy", "full"),
        ("catalogue", str(PROJECT_ROOT / "adapters" / "demo-catalogue.json")),
    )

    @classmethod
    def from_config(cls, path: Path) -> App:
        """The app of an engine configuration file (its only [apps.*] section, outbound
        endpoints left out): e.g. the one a database was made with, so that the cluster's
        webhooks are that app's and its queries find that app's customers."""
        apps = tomllib.loads(path.read_text()).get("apps", {})
        if len(apps) != 1:
            raise SystemExit(f"{path}: one [apps.*] section expected, found {sorted(apps)}")
        ((app_id, section),) = apps.items()
        settings = {k: v for k, v in section.items() if k not in ("endpoints",)}
        secrets, keys = settings.pop("webhook_secrets"), settings.pop("rest_api_keys")
        return cls(app_id, secrets[0], keys[0], tuple(sorted(settings.items())))

    def section(self) -> str:
        lines = [
            f"[apps.{self.app_id}]",
            f"webhook_secrets = [{toml_value(self.secret)}]",
            f"rest_api_keys = [{toml_value(self.rest_key)}]",
        ]
        lines += [f"{key} = {toml_value(value)}" for key, value in self.settings]
        return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """A TOML scalar or array of them (JSON's strings, numbers and arrays are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ValueError(f"not copied into the engine hosts' configuration: {value!r}")


def engine_config(
    path: Path,
    database_url: str,
    host: net.Host,
    read_url: str | None = None,
    endpoint: str | None = None,
    app: App | None = None,
) -> Path:
    app = app or App()
    reads = f'read_url = "{read_url}"\n' if read_url else ""
    endpoints = (
        f'\n[[apps.{app.app_id}.endpoints]]\nurl = "{endpoint}"\nsecret = "{OUTBOUND_SECRET}"\n'
        if endpoint
        else ""
    )
    path.write_text(
        f'[database]\nurl = "{database_url}"\n{reads}\n'
        f'[server]\nhost = "{host.address}"\nport = {ENGINE_PORT}\nworkers = 1\n'
        # What the cluster measures is capacity, not the per-key REST limit (100/s).
        "rate_limit_per_second = 0\n\n"
        f"{app.section()}"
        f"{endpoints}"
    )
    return path


def start_engine(home: Path, host: net.Host) -> int:
    config = home / f"{host.name}.toml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTITLEMENTS_")}
    argv = [str(VENV_BIN / "entitlements"), "--config", str(config), "serve"]
    return spawn(host.netns, argv, home / f"{host.name}.log", env)


def healthz(host: net.Host) -> tuple[int, bytes]:
    return http_get(f"http://{host.address}:{ENGINE_PORT}/healthz", timeout=4.0)


def projector_active(host: net.Host) -> bool:
    """The host's projector holds the lease: `entitlements_projector_active 1.0` on /metrics."""
    status, body = http_get(f"http://{host.address}:{ENGINE_PORT}/metrics", timeout=1.0)
    return status == 200 and b"\nentitlements_projector_active 1.0" in body


def wait_healthy(host: net.Host, log: Path | None = None, timeout: float = 120.0) -> float:
    """Seconds until the host's /healthz answered 200. Otherwise the error says its last
    answer and the end of its log (the cluster's folder is gone once it is torn down)."""
    start = time.monotonic()
    status, body = 0, b""
    while time.monotonic() - start < timeout:
        status, body = healthz(host)
        if status == 200:
            return time.monotonic() - start
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise RuntimeError(
        f"{host.name} not healthy after {timeout:.0f} s; last /healthz: {status} "
        f"{body[:300]!r}; its log ends:\n{tail}"
    )


def receiver_url() -> str:
    return f"http://{net.HOOKS.address}:{RECEIVER_PORT}/hooks"


def start_receiver(home: Path, record: Path) -> int:
    """The outbound endpoint (clusterlib.receiver under uvicorn) in its own namespace."""
    env = {
        **os.environ,
        "PYTHONPATH": str(SCRIPTS_DIR),
        "CLUSTER_RECEIVER_LOG": str(record),
        "CLUSTER_RECEIVER_SECRET": OUTBOUND_SECRET,
        "CLUSTER_RECEIVER_DELAY": str(RECEIVER_DELAY),
    }
    argv = [
        str(VENV_BIN / "uvicorn"), "clusterlib.receiver:app", "--host", net.HOOKS.address,
        "--port", str(RECEIVER_PORT), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    pid = spawn(net.HOOKS.netns, argv, home / "receiver.log", env)
    start = time.monotonic()
    while http_get(f"http://{net.HOOKS.address}:{RECEIVER_PORT}/count")[0] != 200:
        if time.monotonic() - start > 30 or not alive(pid):
            raise RuntimeError(f"the outbound receiver did not start: see {home / 'receiver.log'}")
        time.sleep(0.1)
    return pid


HAPROXY_CFG = """\
global
    maxconn 4096
    stats socket {sock} mode 600 level admin

defaults
    mode http
    option http-keep-alive
    timeout connect 1s
    timeout client 30s
    timeout server 10s
    timeout http-keep-alive 30s
    timeout queue 2s
    retries 2
    option redispatch
    retry-on conn-failure empty-response
    timeout check 1s

frontend webhooks_and_queries
    bind {address}:{port}
    default_backend engines

backend engines
    balance roundrobin
    option httpchk GET /healthz
    # A host is in service while it can record webhooks: /healthz says "database":"ok". Not
    # only on 200: the read models are shared by every host, so a host catching up (503,
    # "catching_up") is no further behind than the others, and taking them all out at once
    # would refuse every webhook for as long as the backlog lasts.
    http-check expect rstring \\"database\\":\\"ok\\"
    default-server inter 500ms fastinter 250ms downinter 500ms fall 2 rise 2 maxconn 256
{servers}
"""


def haproxy_config(path: Path, apps: list[net.Host], sock: Path) -> Path:
    servers = "\n".join(f"    server {h.name} {h.address}:{ENGINE_PORT} check" for h in apps)
    path.write_text(
        HAPROXY_CFG.format(sock=sock, address=net.LB.address, port=LB_PORT, servers=servers)
    )
    return path


def start_haproxy(home: Path, config: Path) -> int:
    check = subprocess.run([haproxy_bin(), "-c", "-f", str(config)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"HAProxy refuses {config}: {check.stdout}{check.stderr}")
    return spawn(net.LB.netns, [haproxy_bin(), "-db", "-f", str(config)], home / "haproxy.log")


def haproxy_servers(sock: Path) -> dict[str, str]:
    """Each engine host's status as HAProxy sees it (UP, DOWN, ...)."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(sock))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return {}
    lines = data.decode().splitlines()
    if not lines:
        return {}
    header = lines[0].lstrip("# ").split(",")
    found = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == "engines" and row.get("svname") not in ("FRONTEND", "BACKEND"):
            found[row["svname"]] = row.get("status", "")
    return found


def read_state(home: Path) -> dict[str, Any]:
    try:
        return json.loads((home / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def write_state(home: Path, state: dict[str, Any]) -> None:
    (home / "state.json").write_text(json.dumps(state, indent=2))
