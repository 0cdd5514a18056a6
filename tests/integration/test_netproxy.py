"""The network-fault harness's TCP proxy (devstack/netproxy.py), as a real process on loopback in front of
a real echo server: it delays each direction by its latency, keeps a stream's order under jitter, passes a
half-close on, and takes a new latency from its config file while connections stay open."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack.processes import child_environment

pytestmark = pytest.mark.integration

Starter = Callable[[dict[str, float]], tuple[int, Path]]


@pytest.fixture
def echo() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    server.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)


@pytest.fixture
def start_proxy(echo: int, tmp_path: Path) -> Iterator[Callable[[dict[str, float]], tuple[int, Path]]]:
    """Start a proxy in front of the echo server with a config; returns its port and config file."""
    processes: list[subprocess.Popen[str]] = []

    def start(delay: dict[str, float]) -> tuple[int, Path]:
        config = tmp_path / f"latency-{len(processes)}.json"
        config.write_text(json.dumps(delay))
        argv = [sys.executable, "-m", "devstack.netproxy", "--listen", "127.0.0.1:0", "--to", f"127.0.0.1:{echo}"]
        process = subprocess.Popen(
            [*argv, "--config", str(config), "--seed", "1"],
            stdout=subprocess.PIPE,
            text=True,
            env=child_environment(),  # the repository on PYTHONPATH: devstack is not installed
        )
        processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("netproxy listening on "), line
        return int(line.split()[3].rsplit(":", 1)[1]), config

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def round_trip_s(conn: socket.socket, payload: bytes) -> float:
    started = time.monotonic()
    conn.sendall(payload)
    received = b""
    while len(received) < len(payload):
        received += conn.recv(65536)
    assert received == payload
    return time.monotonic() - started


def test_each_direction_is_delayed_and_a_new_latency_applies_to_open_connections(start_proxy: Starter) -> None:
    port, config = start_proxy({"latency_ms": 150, "jitter_ms": 0})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        assert round_trip_s(conn, b"ping") >= 0.3  # 150 ms each way
        config.write_text(json.dumps({"latency_ms": 400, "jitter_ms": 0}))
        deadline = time.monotonic() + 10
        while round_trip_s(conn, b"ping") < 0.8:  # the file is looked at every 0.2 s
            assert time.monotonic() < deadline, "the new latency never applied"


def test_a_stream_keeps_its_order_under_jitter_and_its_half_close(start_proxy: Starter) -> None:
    port, _ = start_proxy({"latency_ms": 20, "jitter_ms": 20})
    payload = b"".join(f"{i:06d}\n".encode() for i in range(20000))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:

        def send() -> None:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
        sender.join(timeout=30)
    assert received == payload  # every byte, in order, and the echo's close came back through
