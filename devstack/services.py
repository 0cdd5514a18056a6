"""The local development harness in one import: ``from devstack import services``.

Its parts, one concern each: child processes (:mod:`devstack.processes`), Redis servers
(:mod:`devstack.redis_servers`), S3 servers (:mod:`devstack.s3_servers`), the stack that stops them
(:mod:`devstack.stack`), the ImagineQ processes run with their Procfile lines (:mod:`devstack.imagineq`,
:mod:`devstack.procfile`). The demo, ``make run``, the tests and the benches use these names.
"""

from __future__ import annotations

from devstack.imagineq import (
    deployment_env,
    flower_argv,
    require_local_upstream,
    reserve_port,
    start_beat,
    start_flower,
    start_web,
    start_worker,
    web_argv,
    worker_argv,
)
from devstack.processes import (
    REPO_ROOT,
    Service,
    ServiceError,
    child_environment,
    free_port,
    http_ok,
    spawn,
    terminate_on_signals,
    wait_until,
)
from devstack.redis_servers import (
    ReplicatedRedis,
    redis_reachable,
    redis_server_binary,
    start_redis,
    start_sentinel,
)
from devstack.s3_servers import S3Credentials, s3_credentials, s3_ports, start_moto_s3, start_s3, weed_binary
from devstack.stack import LocalStack, start_replicated_redis, start_simulator

__all__ = [
    "REPO_ROOT",
    "LocalStack",
    "ReplicatedRedis",
    "S3Credentials",
    "Service",
    "ServiceError",
    "child_environment",
    "deployment_env",
    "flower_argv",
    "free_port",
    "http_ok",
    "redis_reachable",
    "redis_server_binary",
    "require_local_upstream",
    "reserve_port",
    "s3_credentials",
    "s3_ports",
    "spawn",
    "start_beat",
    "start_flower",
    "start_moto_s3",
    "start_redis",
    "start_replicated_redis",
    "start_s3",
    "start_sentinel",
    "start_simulator",
    "start_web",
    "start_worker",
    "terminate_on_signals",
    "wait_until",
    "web_argv",
    "weed_binary",
    "worker_argv",
]
