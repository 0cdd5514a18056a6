"""The network-fault harness's hosts (devstack/netns.py): real namespaces on a bridge, an echo server on one
host, clients on another and in the test itself; partitions, loss and rate limits do what they say, and
nothing is left behind. Every address is in 198.19.0.0/16, inside the namespaces."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from devstack.deployment import wait_until
from devstack.netns import ROOT_ADDRESS, Host, Net, hosts, sh
from devstack.processes import child_environment

pytestmark = pytest.mark.integration

PORT = 7000
ECHO = """
import socket, sys, threading
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
while True:
    conn, _ = server.accept()
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
"""
#: A client in a host's namespace: exit 0 when the echo came back within the timeout.
CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as conn:
    conn.sendall(b"ping")
    assert conn.recv(4) == b"ping"
"""


def reaches(client: Host, server: Host, timeout_s: float = 2.0) -> bool:
    argv = [sys.executable, "-c", CLIENT, server.address, str(PORT), str(timeout_s)]
    return client.run(*argv, check=False).returncode == 0


def root_reaches(server: Host, timeout_s: float = 2.0) -> bool:
    try:
        with socket.create_connection((server.address, PORT), timeout=timeout_s) as conn:
            conn.sendall(b"ping")
            return conn.recv(4) == b"ping"
    except OSError:
        return False


def test_partitions_loss_and_rate_limits_between_hosts() -> None:
    with hosts("a", "b", "c", prefix="iqt1") as (net, made):
        a, b, c = made["a"], made["b"], made["c"]
        assert all(ip.startswith("198.19.") for ip in (a.address, b.address, c.address))
        server = b.popen([sys.executable, "-c", ECHO, b.address, str(PORT)], env=child_environment())
        try:
            wait_until(lambda: root_reaches(b), 30, "the echo server on b")
            assert reaches(a, b) and reaches(c, b)

            net.partition(a, b)
            assert not reaches(a, b)  # dropped, not refused: the connection attempt times out
            assert reaches(c, b) and root_reaches(b)  # only a and b are cut apart
            net.heal()
            assert reaches(a, b)

            net.loss(a, 100)
            assert not reaches(a, b)
            net.loss(a, 0)
            assert reaches(a, b)

            net.rate(b, 64)  # 8 KB/s each way: 32 KB there and back takes at least 4 s in all
            started = time.monotonic()
            with socket.create_connection((b.address, PORT), timeout=60) as conn:
                payload = b"x" * 32768
                conn.sendall(payload)
                received = b""
                while len(received) < len(payload):
                    received += conn.recv(65536)
            assert time.monotonic() - started >= 3.0
            net.rate(b, None)
        finally:
            server.kill()
            server.wait(timeout=10)
    assert "iqt1-" not in sh("ip", "netns", "list").stdout
    assert sh("ip", "link", "show", "iqt1-root", check=False).returncode != 0


def test_the_root_namespace_gets_no_route_but_the_hosts_own() -> None:
    """The test's port on the bridge carries 198.19.0.0/16 only: nothing else is routed into the namespaces."""
    with Net(prefix="iqt2") as net:
        host = net.host("a")
        assert "default" not in host.run("ip", "route").stdout  # a host can reach nothing outside the bridge
        assert ROOT_ADDRESS in sh("ip", "-4", "addr", "show", "iqt2-root").stdout
        # No route: the kernel refuses at once (ENETUNREACH) and no packet is sent (TEST-NET-3).
        connect = "import socket; socket.create_connection(('203.0.113.1', 80), 1)"
        outside = host.run(sys.executable, "-c", connect, check=False)
        assert outside.returncode != 0 and "unreachable" in outside.stderr.lower()


def test_a_leftover_from_a_killed_run_is_cleared() -> None:
    subprocess.run(["ip", "netns", "add", "iqt3-stale"], check=True)
    with Net(prefix="iqt3") as net:
        assert "iqt3-stale" not in sh("ip", "netns", "list").stdout
        net.host("a")
    assert "iqt3-" not in sh("ip", "netns", "list").stdout
