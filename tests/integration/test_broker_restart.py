"""Workers survive Redis going away and coming back (``workers/broker.py``).

Without the transport fix, kombu raised ``AttributeError`` while closing the lost connection and two of
three restarts made a worker exit ("Unrecoverable error"). Here Redis is restarted three times while
jobs run; every worker must still be alive afterwards and new jobs must be stored.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.jobs import JobState
from devstack import services
from devstack.deployment import FAST_POLL, Deployment, wait_until
from devstack.services import LocalStack
from workers.storage import Storage

RESTARTS = 3
QUEUES = ("submit", "poll", "store")


@pytest.mark.chaos  # a fault scenario of 45 s: run by make chaos (CI runs it after make test)
def test_workers_survive_redis_restarts(tmp_path: Path) -> None:
    with services.terminate_on_signals(), LocalStack(tmp_path) as stack:
        port = services.free_port()
        redis_service = stack.add(services.start_redis(stack.log_dir, port=port, appendonly=True))
        s3 = stack.s3()
        simulator = stack.simulator(["--gen-time", "0.5:1", "--video-bytes", "4096"])
        env = services.deployment_env(
            redis_url=redis_service.url,
            s3=s3,
            simulator_url=simulator.url,
            bucket="restarts",
            extra=FAST_POLL,
        )
        dep = Deployment(stack, env, simulator)
        Storage(dep.settings.s3, dep.settings.http).ensure_bucket()
        workers = [dep.start_worker(queue) for queue in QUEUES]
        try:
            for restart in range(RESTARTS):
                dep.producer.enqueue_many([{"prompt": f"restart {restart} job {i}"} for i in range(10)])
                # Let the jobs spread over the three steps, so every worker holds messages when Redis goes.
                wait_until(lambda: dep.producer.jobs.count_by_state()[JobState.GENERATING] > 0, 30, "polls")
                redis_service.stop()
                redis_service = stack.add(services.start_redis(stack.log_dir, port=port, appendonly=True))
                # A worker that is going to exit does so while reconnecting; give every one time to.
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and all(worker.alive() for worker in workers):
                    time.sleep(0.2)
                dead = [worker.name for worker in workers if not worker.alive()]
                assert not dead, f"restart {restart}: {dead} exited:\n" + "\n".join(
                    worker.log_tail(20) for worker in workers if not worker.alive()
                )
            after = dep.producer.enqueue_many([{"prompt": f"after the restarts {i}"} for i in range(5)])
            stored = dep.wait_all(after, timeout=90)
            assert [job.state for job in stored] == [JobState.STORED] * len(after)
        finally:
            dep.close()
