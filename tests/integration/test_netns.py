"""The network-fault harness's hosts (devstack/netns.py): real namespaces on a bridge, an echo server on one
host, clients on another and in the test itself; partitions, loss and rate limits do what they say, and
nothing is left behind. Every address is in 198.19.0.0/16, inside the namespaces."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time

import pytest

from devstack import processes
from devstack.deployment import wait_until
from devstack.netns import ROOT_ADDRESS, Host, Net, hosts, sh
from devstack.processes import ServiceError, child_environment

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


#: An upstream stand-in on a host: answers every POST with a taskId and writes down each request it gets.
RECORDING_UPSTREAM = """
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[3], "a") as log:
            log.write(json.dumps({"path": self.path, "body": body.decode()}) + "\\n")
        answer = json.dumps({"code": 200, "msg": "success", "data": {"taskId": "t1"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"""
#: On another host: the product's upstream client and a plain requests session, each with a connection
#: open to the stand-in; once the file ``go`` exists (the test cut the link) each sends one more request,
#: gives up after 1 s and closes its connection. It writes ``ready`` and ``outcomes`` beside ``go``.
TWO_CLIENTS = """
import sys, threading, time
from pathlib import Path
import requests
from config.settings import AccountSettings, HttpSettings
from core.errors import OutcomeUnknown
from workers.upstream.client import UpstreamClient
base, folder = sys.argv[1], Path(sys.argv[2])
client = UpstreamClient(AccountSettings(name="a", api_key="k" * 32, base_url=base), HttpSettings(read_timeout_s=1))
plain = requests.Session()
assert client.create_task({"prompt": "warm"}) == "t1"
plain.post(base + "/control", data="warm", timeout=5)
(folder / "ready").touch()
while not (folder / "go").exists():
    time.sleep(0.05)
outcomes = []
def product():
    try:
        client.create_task({"prompt": "late"})
    except OutcomeUnknown:
        outcomes.append("product-unknown")
def control():
    try:
        plain.post(base + "/control", data="late", timeout=1)
    except requests.Timeout:
        outcomes.append("control-unknown")
threads = [threading.Thread(target=product), threading.Thread(target=control)]
for t in threads: t.start()
for t in threads: t.join()
client.close()
plain.close()
(folder / "outcomes").write_text(" ".join(sorted(outcomes)))
"""


def test_a_create_task_given_up_is_never_delivered_after_the_heal(tmp_path) -> None:
    # Given an upstream on one host, and on another the upstream client and a plain session, each with a
    # connection open to it
    log = tmp_path / "requests.jsonl"
    log.touch()

    def late(path: str) -> bool:
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        return any(path in e["path"] and "late" in e["body"] for e in entries)

    with hosts("up", "worker", prefix="iqt4") as (net, made):
        up, worker = made["up"], made["worker"]
        server = up.popen([sys.executable, "-c", RECORDING_UPSTREAM, up.address, str(PORT), str(log)])
        clients = worker.popen(
            [sys.executable, "-c", TWO_CLIENTS, f"http://{up.address}:{PORT}", str(tmp_path)], env=child_environment()
        )
        try:
            wait_until(lambda: (tmp_path / "ready").exists() or clients.poll() is not None, 60, "the clients")
            assert clients.poll() is None, "the clients could not reach the upstream stand-in"

            # When the link is cut, each sends a request, gives up after 1 s and closes, and the link heals
            net.partition(up, worker)
            (tmp_path / "go").touch()
            assert clients.wait(timeout=30) == 0
            assert (tmp_path / "outcomes").read_text() == "control-unknown product-unknown"
            net.heal()

            # Then the kernel delivers the plain session's abandoned request late (retransmitted after
            # the heal), and never the createTask: its connection was reset on close, its bytes dropped
            wait_until(lambda: late("/control"), 60, "the plain session's abandoned request to arrive")
            # (both were retransmitted on the same schedule: a late createTask would come within moments)
            with contextlib.suppress(ServiceError):
                processes.wait_until(lambda: late("createTask"), 2, "a late createTask")
            assert not late("createTask"), "the given-up createTask reached the upstream after the heal"
        finally:
            for process in (server, clients):
                if process.poll() is None:
                    process.kill()
                    process.wait(timeout=10)
