"""A stack of local services, stopped in reverse order when it closes."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from devstack.processes import Service, ServiceError, first_line_url, spawn
from devstack.redis_servers import ReplicatedRedis, redis_reachable, start_redis
from devstack.redis_servers import start_replicated_redis as replicated_redis
from devstack.s3_servers import start_moto_s3, start_s3


def start_simulator(log_dir: Path, args: Sequence[str] = ()) -> Service:
    """The Apikley simulator on a free port (it prints the URL it listens on)."""
    argv = [sys.executable, "-m", "simulator", "--port", "0", "--admin", *args]
    service = spawn("simulator", argv, log_dir=log_dir, stdout_pipe=True)
    service.url = first_line_url(service, "simulator listening on ", timeout_s=30)
    return service


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


def start_replicated_redis(stack: LocalStack, **options: Any) -> ReplicatedRedis:
    """A primary, replicas and Sentinels on ``stack`` (see :func:`devstack.redis_servers.start_replicated_redis`)."""
    return replicated_redis(stack.log_dir, stack.add, **options)
