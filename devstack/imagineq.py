"""The ImagineQ processes of a local deployment — workers, the web, beat, Flower — each run with its
``Procfile`` command line (:mod:`devstack.procfile`), changed only where a test or a bench must (a free
port, a concurrency, a node name), never restated; and the settings that point them at the local services.
Workers start only against a local upstream (a loopback address: the simulator); anything else is refused.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from config.settings import DEFAULT_BASE_URL
from devstack.processes import Service, ServiceError, await_ready, free_port, http_ok, read_log, spawn
from devstack.procfile import command, with_option, without_option
from devstack.stack import LocalStack


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


#: A worker for these queues runs the Procfile line of the process of the same name; any other queue list
#: runs the submit worker's line with its queues changed.
WORKER_PROCESSES = ("submit", "poll", "store", "notify")


def worker_argv(queue: str, *, concurrency: int = 2, name: str | None = None, pool: str = "prefork") -> list[str]:
    """The Procfile's worker for ``queue`` with the harness's concurrency, node name and pool; gossip and
    mingle off (a test's workers need not know each other, and starting is faster without)."""
    argv = command(queue if queue in WORKER_PROCESSES else "submit")
    argv = with_option(argv, "-Q", queue)
    argv = with_option(argv, "-c", str(concurrency))
    argv = with_option(argv, "-n", f"{name or queue}@%h")
    argv = with_option(argv, "-P", pool)
    return with_option(with_option(argv, "--without-gossip"), "--without-mingle")


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
    await_ready(service, lambda: "ready." in read_log(service.log_path), 60)
    return service


def web_argv(port: int, *, host: str = "127.0.0.1", fd: int | None = None) -> list[str]:
    """The Procfile's ``web`` on ``host:port``, or on an inherited socket ``fd`` when given; quiet (no
    access log: the tests read the logs they need)."""
    argv = command("web", {"WEB_HOST": host, "PORT": str(port)})
    if fd is not None:
        argv = with_option(without_option(without_option(argv, "--host"), "--port"), "--fd", str(fd))
    return with_option(with_option(argv, "--no-access-log"), "--log-level", "warning")


def reserve_port() -> socket.socket:
    """A listening socket on a free loopback port, for a server to take over (``start_web(sock=...)``):
    the port is known at once (for callback URLs) and nobody else can take it in between."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.set_inheritable(True)
    return sock


def start_web(
    stack: LocalStack,
    env: Mapping[str, str],
    *,
    port: int | None = None,
    sock: socket.socket | None = None,
    ready_path: str = "/healthz",
) -> Service:
    """The web process, ready when ``ready_path`` answers 2xx (``/healthz``: Redis too; ``/livez``: the
    process alone): on ``port``, or serving ``sock`` (from :func:`reserve_port`; a new one when neither
    is given)."""
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
    await_ready(service, lambda: http_ok(f"{service.url}{ready_path}"), 60)
    return service


def start_beat(stack: LocalStack, env: Mapping[str, str], name: str = "beat") -> Service:
    """The Procfile's beat (its schedule and lock in Redis) with ``env``, on ``stack``."""
    return stack.spawn(name, command("beat"), env)


def flower_argv(port: int, db: str) -> list[str]:
    """The Procfile's Flower on ``port``, its state in ``db``."""
    return command("flower", {"FLOWER_PORT": str(port), "FLOWER_ADDRESS": "127.0.0.1", "FLOWER_DB": db})


def start_flower(stack: LocalStack, env: Mapping[str, str], port: int, basic_auth: str, db: Path) -> Service:
    """The Procfile's Flower on ``port`` behind ``basic_auth`` (``user:password``), its state in ``db``."""
    service = stack.spawn("flower", flower_argv(port, str(db)), {**env, "FLOWER_BASIC_AUTH": basic_auth})
    service.url = f"http://127.0.0.1:{port}"
    return service
