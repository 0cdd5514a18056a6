"""Hosts on one machine for network-fault tests: network namespaces on a bridge, with partitions, random
loss and rate limits between them (root only: the developers' machines and CI run as root).

Each host is a namespace ``<prefix>-<name>`` with its loopback and an ``eth0`` (a veth whose peer sits on a
bridge in the namespace ``<prefix>-sw``) addressed in 198.19.0.0/16 (half of RFC 2544's benchmarking
range 198.18.0.0/15; the compose test's Docker engine takes the other half), which exists only inside
these namespaces: no packet between hosts ever reaches a real network. The root
namespace (the test itself) joins the bridge as 198.19.0.1, so a test reaches every host and every host
reaches the test, and nothing else.

- ``partition(a, b)``: iptables DROP between the two hosts, both directions, in both namespaces (so a
  connection attempt hangs, as across a real partition, rather than being refused); ``heal()`` lifts every
  partition.
- ``loss(host, pct)``: iptables' ``statistic`` match drops that share of the host's packets both ways.
- ``rate(host, kbit)``: an HTB class on both ends of the host's link (its eth0 and its bridge port), so
  what it sends and what it receives are limited.
- Latency is not made here (the kernel has no netem): ``devstack.netproxy`` delays TCP between hosts.

``Net`` is a context manager: every namespace, link and rule it made is removed on exit, failed or not.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

SUBNET: Final = ipaddress.ip_network("198.19.0.0/16")
#: The root namespace's address on the bridge (the test's own).
ROOT_ADDRESS: Final = "198.19.0.1"


class NetError(RuntimeError):
    """A command building or changing the hosts' network failed."""


def sh(*argv: str, namespace: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    full = ["ip", "netns", "exec", namespace, *argv] if namespace else list(argv)
    done = subprocess.run(full, capture_output=True, text=True, timeout=60, check=False)
    if check and done.returncode != 0:
        raise NetError(f"{' '.join(full)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    #: Its link's ends: eth0 in its namespace, the bridge port in the switch's.
    port: str
    net: Net = field(repr=False)

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command inside this host's namespace."""
        return sh(*argv, namespace=self.namespace, check=check)

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: IO[bytes] | int | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """A process started inside this host's namespace (``ip netns exec`` execs it: its pid is the
        process's own)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, *argv],
            env=dict(env) if env is not None else None,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            cwd=cwd,
            start_new_session=True,
        )


class Net:
    """The hosts of one test, on one bridge (see the module docstring)."""

    def __init__(self, prefix: str = "iqn") -> None:
        if os.geteuid() != 0:
            raise NetError("network namespaces need root (the developers' machines and CI run as root)")
        self.prefix = prefix
        self.switch = f"{prefix}-sw"
        self.hosts: dict[str, Host] = {}
        self._addresses = (str(a) for a in SUBNET.hosts() if str(a) != ROOT_ADDRESS)
        self._partitions: list[tuple[Host, Host]] = []
        self._root_link = f"{prefix}-root"

    # -- building ---------------------------------------------------------------------------------------
    def __enter__(self) -> Net:
        self._cleanup()  # what an earlier run killed before its teardown may have left
        try:
            sh("ip", "netns", "add", self.switch)
            sh("ip", "link", "set", "lo", "up", namespace=self.switch)
            sh("ip", "link", "add", "br0", "type", "bridge", namespace=self.switch)
            sh("ip", "link", "set", "br0", "up", namespace=self.switch)
            # The root namespace's port: the test reaches the hosts through it (and only them).
            sh("ip", "link", "add", self._root_link, "type", "veth", "peer", "name", "root", "netns", self.switch)
            sh("ip", "link", "set", "root", "master", "br0", namespace=self.switch)
            sh("ip", "link", "set", "root", "up", namespace=self.switch)
            sh("ip", "addr", "add", f"{ROOT_ADDRESS}/{SUBNET.prefixlen}", "dev", self._root_link)
            sh("ip", "link", "set", self._root_link, "up")
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self._cleanup()

    def host(self, name: str) -> Host:
        """A new host ``name`` on the bridge, with the next free address."""
        if name in self.hosts:
            raise NetError(f"host {name} exists")
        namespace, port = f"{self.prefix}-{name}", f"p-{name}"[:15]
        address = next(self._addresses)
        sh("ip", "netns", "add", namespace)
        sh("ip", "link", "set", "lo", "up", namespace=namespace)
        sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.switch, namespace=namespace)
        sh("ip", "link", "set", port, "master", "br0", namespace=self.switch)
        sh("ip", "link", "set", port, "up", namespace=self.switch)
        sh("ip", "addr", "add", f"{address}/{SUBNET.prefixlen}", "dev", "eth0", namespace=namespace)
        sh("ip", "link", "set", "eth0", "up", namespace=namespace)
        host = Host(name, namespace, address, port, self)
        self.hosts[name] = host
        return host

    # -- faults -----------------------------------------------------------------------------------------
    def partition(self, a: Host, b: Host) -> None:
        """Packets between ``a`` and ``b`` are dropped, both ways, until :meth:`heal`."""
        for here, there in ((a, b), (b, a)):
            here.run("iptables", "-I", "INPUT", "-s", there.address, "-j", "DROP")
            here.run("iptables", "-I", "OUTPUT", "-d", there.address, "-j", "DROP")
        self._partitions.append((a, b))

    def heal(self) -> None:
        """Every partition lifted."""
        for a, b in self._partitions:
            for here, there in ((a, b), (b, a)):
                here.run("iptables", "-D", "INPUT", "-s", there.address, "-j", "DROP", check=False)
                here.run("iptables", "-D", "OUTPUT", "-d", there.address, "-j", "DROP", check=False)
        self._partitions.clear()

    def loss(self, host: Host, pct: float) -> None:
        """Drop ``pct`` % of the host's packets, each way (0: none)."""
        # In the mangle table, apart from the partitions' rules: setting a new share replaces the old.
        for chain in ("INPUT", "OUTPUT"):
            rule = ["-m", "statistic", "--mode", "random", "--probability", f"{pct / 100:.6f}", "-j", "DROP"]
            host.run("iptables", "-t", "mangle", "-F", chain, check=False)
            if pct > 0:
                host.run("iptables", "-t", "mangle", "-A", chain, *rule)

    def rate(self, host: Host, kbit: int | None) -> None:
        """Limit the host's link to ``kbit`` kbit/s each way (None: no limit)."""
        for device, namespace in (("eth0", host.namespace), (host.port, self.switch)):
            sh("tc", "qdisc", "del", "dev", device, "root", namespace=namespace, check=False)
            if kbit:
                sh(
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    device,
                    "root",
                    "handle",
                    "1:",
                    "htb",
                    "default",
                    "10",
                    namespace=namespace,
                )
                sh(
                    "tc", "class", "add", "dev", device, "parent", "1:", "classid", "1:10", "htb",
                    "rate", f"{kbit}kbit", "ceil", f"{kbit}kbit", namespace=namespace,
                )  # fmt: skip

    # -- teardown ---------------------------------------------------------------------------------------
    def _cleanup(self) -> None:
        """Remove every namespace of this prefix (their links and rules go with them) and the root's port."""
        sh("ip", "link", "del", self._root_link, check=False)
        listed = sh("ip", "netns", "list", check=False).stdout.split()
        for namespace in listed:
            if namespace.startswith(f"{self.prefix}-"):
                _kill_processes_in(namespace)
                sh("ip", "netns", "del", namespace, check=False)
        self.hosts.clear()
        self._partitions.clear()


def _kill_processes_in(namespace: str) -> None:
    """SIGKILL what still runs in ``namespace`` (``ip netns pids``): a namespace with processes in it
    outlives its deletion."""
    pids = sh("ip", "netns", "pids", namespace, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            continue


@contextmanager
def hosts(*names: str, prefix: str = "iqn") -> Iterator[tuple[Net, dict[str, Host]]]:
    """``Net`` with ``names`` made, for a test's ``with``."""
    with Net(prefix) as net:
        yield net, {name: net.host(name) for name in names}
