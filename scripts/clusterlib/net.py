"""The cluster's network: one namespace per host, all on one bridge, on a subnet of its own.

    ent-sw       the switch: bridge br0, 10.213.0.1 (the load client runs here)
    ent-lb       HAProxy, 10.213.0.5
    ent-db       PostgreSQL, 10.213.0.10
    ent-app1..3  engine hosts, 10.213.0.11..13
    ent-replica  a hot standby, 10.213.0.20 (when asked for)
    ent-hooks    the outbound webhooks' receiver, 10.213.0.30 (an app's endpoint)

Every link is made inside these namespaces (`ip -n`): the root namespace gets no address, no
route and no interface, and no namespace has a default route, so no packet can leave the subnet.
Deleting a namespace deletes its veth end, and with it the peer on the bridge.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

SUBNET = "10.213.0"
SWITCH = "ent-sw"
SWITCH_ADDRESS = f"{SUBNET}.1"
PREFIX = "ent-"


@dataclass(frozen=True)
class Host:
    name: str  # app1, db, lb...
    address: str

    @property
    def netns(self) -> str:
        return PREFIX + self.name


LB = Host("lb", f"{SUBNET}.5")
DB = Host("db", f"{SUBNET}.10")
REPLICA = Host("replica", f"{SUBNET}.20")
HOOKS = Host("hooks", f"{SUBNET}.30")


def app_host(number: int) -> Host:
    return Host(f"app{number}", f"{SUBNET}.{10 + number}")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def namespaces() -> list[str]:
    """The cluster's namespaces that exist now."""
    listed = ip("netns", "list", check=False).stdout.split("\n")
    names = [line.split()[0] for line in listed if line.strip()]
    return [name for name in names if name.startswith(PREFIX)]


def can_make_namespaces() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    import os

    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs `ip` (iproute2)"
    probe = PREFIX + "probe"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        for kind, args in (
            ("bridge", ["br-probe", "type", "bridge"]),
            ("veth", ["v-probe", "type", "veth", "peer", "name", "v-probe2"]),
        ):
            link = ip("-n", probe, "link", "add", *args, check=False)
            if link.returncode != 0:
                return f"cannot make a {kind} link: {link.stderr.strip()}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


def make_switch() -> None:
    ip("netns", "add", SWITCH)
    ip("-n", SWITCH, "link", "set", "lo", "up")
    ip("-n", SWITCH, "link", "add", "br0", "type", "bridge")
    ip("-n", SWITCH, "addr", "add", f"{SWITCH_ADDRESS}/24", "dev", "br0")
    ip("-n", SWITCH, "link", "set", "br0", "up")


def make_host(host: Host) -> None:
    """A namespace whose eth0 is plugged into the switch."""
    ip("netns", "add", host.netns)
    ip("-n", host.netns, "link", "set", "lo", "up")
    port = f"v-{host.name}"
    ip(
        "-n",
        SWITCH,
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        host.netns,
    )
    ip("-n", SWITCH, "link", "set", port, "master", "br0", "up")
    ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
    ip("-n", host.netns, "link", "set", "eth0", "up")


def set_link(host: Host, up: bool) -> None:
    """Cut or restore a host's network (its only interface besides loopback)."""
    ip("-n", host.netns, "link", "set", "eth0", "up" if up else "down")


def pids_in(netns: str) -> list[int]:
    found = ip("netns", "pids", netns, check=False).stdout.split()
    return [int(pid) for pid in found if pid.isdigit()]


def delete_all() -> list[str]:
    """Delete every `ent-*` namespace (idempotent); the names deleted."""
    gone = []
    for name in namespaces():
        if ip("netns", "del", name, check=False).returncode == 0:
            gone.append(name)
    return gone


def in_netns(netns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]
