"""Starting and stopping the servers under test: `entitlements serve` and the floor apps.

Both run under the same uvicorn settings (`uvicorn.run` defaults as `entitlements serve` uses
them: uvloop, httptools, log level info with access log), each in its own process group, with
their output in a log file of the run's work directory.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

SCRIPTS_DIR = Path(__file__).resolve().parent.parent
PROJECT_ROOT = SCRIPTS_DIR.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process group; `stop()` ends it and every worker it forked."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, port: int):
        self.name = name
        self.port = port
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=PROJECT_ROOT,
            )

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and its worker processes (from /proc)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in _process_tree(self.proc.pid):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(self.base_url + path, timeout=1.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        tail = self.log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{self.name} did not start; log {self.log}:\n{tail}")

    def wait_idle(self, timeout: float = 15.0, window: float = 0.5, busy: float = 0.05) -> None:
        """Until the server's processes (its projector included) use under `busy` of a core
        over `window` seconds: a server has started once its start-up work is done."""
        deadline = time.monotonic() + timeout
        used = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(window)
            now = self.cpu_seconds()
            if now - used < busy * window:
                return
            used = now

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def engine_config(
    path: Path,
    database_url: str,
    app_id: str,
    secret: str,
    api_key: str,
    catalogue: Path | None = None,
) -> Path:
    """A config for `entitlements serve`; the demo catalogue unless `catalogue` is given."""
    catalogue = catalogue or PROJECT_ROOT / "adapters" / "demo-catalogue.json"
    path.write_text(
        f'[database]\nurl = "{database_url}"\n\n'
        f'[server]\nhost = "127.0.0.1"\nmax_body_bytes = 1048576\n'
        # Capacity, not the per-key REST rate limit (100/s by default), is what W3 measures.
        "rate_limit_per_second = 0\n\n"
        f"[apps.{app_id}]\n"
        f'webhook_secrets = ["{secret}"]\nrest_api_keys = ["{api_key}"]\n'
        f'grace_period = "P3D"\nrenewal_leeway = "P1D"\nrefund_policy = "full"\n'
        f'catalogue = "{catalogue}"\n'
    )
    return path


def start_engine(config: Path, workers: int, log: Path) -> Server:
    port = free_port()
    exe = str(Path(sys.executable).with_name("entitlements"))
    argv = [
        exe,
        "--config",
        str(config),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    env = {k: v for k, v in os.environ.items() if k != "ENTITLEMENTS_DATABASE_URL"}
    server = Server("entitlements serve", argv, env, log, port)
    server.wait_ready("/healthz")
    return server


def start_floor(mode: str, database_url: str, secret: str, workers: int, log: Path) -> Server:
    """mode: naive | group | bare (no database: the load generator's ceiling only)."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "benchlib.floors:create_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "info",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SCRIPTS_DIR), os.environ.get("PYTHONPATH", "")]),
        "BENCH_FLOOR_MODE": mode,
        "BENCH_FLOOR_DB": "" if mode == "bare" else database_url,
        "BENCH_SECRET": secret,
    }
    server = Server(f"floor ({mode})", argv, env, log, port)
    server.wait_ready("/bare")
    return server
