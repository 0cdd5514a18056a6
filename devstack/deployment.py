"""A whole deployment on private local services — Redis, an S3 server, the simulator, real Celery workers —
for the tests and the benches, with what they do to it (start workers and Flower, drive the simulator,
run the CLI, wait for jobs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import boto3
import requests

from config.settings import Settings, load_settings
from core.jobs import Job
from devstack import services
from devstack.services import LocalStack, Service
from producers.api import Producer

T = TypeVar("T")

#: Fast polls for tests (generation takes well under a second there): from the start, at most every 0.3 s.
FAST_POLL = {"IMAGINEQ_POLL__SCHEDULE": json.dumps([[600, 0.3]]), "IMAGINEQ_POLL__FIRST_CHECK_S": "0"}


class Deployment:
    def __init__(self, stack: LocalStack, env: dict[str, str], simulator: Service) -> None:
        self.stack = stack
        self.env = env
        self.simulator = simulator
        self.s3_url = env["IMAGINEQ_S3__ENDPOINT_URL"]
        self.workers: dict[str, list[Service]] = {}
        self.settings: Settings = settings_from(env)
        self.producer = Producer(self.settings)
        self.s3 = boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            region_name="us-east-1",
            aws_access_key_id=env["IMAGINEQ_S3__ACCESS_KEY_ID"],
            aws_secret_access_key=env["IMAGINEQ_S3__SECRET_ACCESS_KEY"],
        )

    # -- processes ----------------------------------------------------------------------------------
    def start_worker(self, queue: str, *, concurrency: int = 2, env: Mapping[str, str] | None = None) -> Service:
        service = services.start_worker(self.stack, {**self.env, **(env or {})}, queue, concurrency=concurrency)
        self.workers.setdefault(queue, []).append(service)
        return service

    # -- simulator ----------------------------------------------------------------------------------
    def start_flower(self, port: int, user: str, password: str) -> Service:
        """The Procfile's flower command on ``port``, its login in its environment as in production;
        ready once it has seen every running worker (so it receives their task events from then on)."""
        argv = services.flower_argv(port, str(self.stack.log_dir / f"flower-{port}.db"))
        service = self.stack.spawn(f"flower-{port}", argv, {**self.env, "FLOWER_BASIC_AUTH": f"{user}:{password}"})
        service.url = f"http://127.0.0.1:{port}"
        workers = [w for group in self.workers.values() for w in group if w.alive()]

        def capturing_events() -> bool:
            try:
                metrics = requests.get(f"{service.url}/metrics", timeout=1).text
            except requests.RequestException:
                return False
            return metrics.count("flower_worker_online{") >= len(workers) and service.alive()

        wait_until(capturing_events, 45, "flower to see every worker")
        return service

    def sim(self, path: str, payload: Mapping[str, Any] | None = None) -> Any:
        url = f"{self.simulator.url}/__sim__/{path}"
        response = (
            requests.post(url, json=payload, timeout=10) if payload is not None else requests.get(url, timeout=10)
        )
        response.raise_for_status()
        return response.json()

    def sim_config(self, **changes: Any) -> Any:
        return self.sim("config", changes)

    def stats(self) -> dict[str, Any]:
        return dict(self.sim("stats"))

    def expected_sha256(self, task_id: str) -> str:
        return str(self.sim(f"files/{task_id}/sha256")["sha256"])

    def cli(
        self, *args: str, timeout_s: float = 120, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``imagineq ARGS`` (the real CLI, a process of its own), as an operator runs it against this
        deployment: its settings only (changed by ``env``), in this deployment's log folder."""
        cli = Path(sys.executable).parent / "imagineq"
        env = services.child_environment({**self.env, **(env or {})})
        return subprocess.run(
            [str(cli), *args], env=env, cwd=self.stack.log_dir, capture_output=True, text=True, timeout=timeout_s
        )

    # -- jobs ---------------------------------------------------------------------------------------
    def wait_all(self, jobs: Sequence[Job], timeout: float = 90) -> list[Job]:
        return [self.producer.wait(job.id, timeout=timeout) for job in jobs]

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        services.wait_until(predicate, timeout, what, interval_s=0.1)

    def close(self) -> None:
        self.producer.close()


def settings_from(env: Mapping[str, str]) -> Settings:
    """Settings for this process from the same variables the child processes get."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        return load_settings()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def deployment(
    log_dir: Path,
    *,
    simulator_args: Sequence[str] = ("--gen-time", "0.3:0.8", "--video-bytes", "262144"),
    env: Mapping[str, str] | None = None,
    workers: Mapping[str, int] | None = None,
    bucket: str = "imagineq-test",
    s3_kind: str = "seaweedfs",
) -> Any:
    with services.terminate_on_signals(), LocalStack(log_dir) as stack:
        redis_url = stack.redis()
        s3 = stack.s3(kind=s3_kind)
        simulator = stack.simulator(list(simulator_args))
        full_env = services.deployment_env(
            redis_url=redis_url,
            s3=s3,
            simulator_url=simulator.url,
            bucket=bucket,
            extra={
                **FAST_POLL,
                "IMAGINEQ_PAUSE_CHECK_INTERVAL_S": "0.5",
                # "{simulator}" in a value (e.g. account base URLs) stands for the simulator's URL.
                **{name: value.replace("{simulator}", simulator.url) for name, value in (env or {}).items()},
            },
        )
        deployed = Deployment(stack, full_env, simulator)
        from workers.storage import Storage

        Storage(deployed.settings.s3, deployed.settings.http).ensure_bucket()
        for queue, concurrency in (workers if workers is not None else {"submit": 2, "poll": 2, "store": 2}).items():
            deployed.start_worker(queue, concurrency=concurrency)
        try:
            yield deployed
        finally:
            deployed.close()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """The services module's poller, failing the test (AssertionError) on timeout."""
    try:
        services.wait_until(predicate, timeout, what, interval_s=0.1)
    except services.ServiceError as error:
        raise AssertionError(str(error)) from None


def must(value: T | None) -> T:
    """``value``, which the test expects to exist (a job record, a task id, an S3 URI)."""
    assert value is not None
    return value
