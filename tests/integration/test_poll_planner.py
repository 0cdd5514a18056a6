"""The poll planner with real poll workers: one budget per key however many workers, and no task forgotten
when a poll worker dies with every job's next check in its hands."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from core.jobs import JobState
from devstack.deployment import Deployment, deployment, wait_until
from workers.reconcile import Reconciler
from workers.runtime import Runtime

pytestmark = pytest.mark.integration

#: The simulator counts recordInfo over every rolling second, as the upstream documents, at 10 per key.
SIMULATOR_ARGS = ("--gen-time", "3:6", "--video-bytes", "65536", "--record-info-per-s", "10")


@pytest.fixture
def dep(tmp_path) -> Iterator[Deployment]:
    with deployment(tmp_path, simulator_args=SIMULATOR_ARGS, workers={"submit": 2, "store": 2}) as deployed:
        yield deployed


def test_many_poll_workers_share_one_recordinfo_budget(dep: Deployment) -> None:
    # Three poll workers, and tests' polls as fast as 0.3 s per task: far more checks wanted than 10/s.
    for _ in range(3):
        dep.start_worker("poll", concurrency=4)
    jobs = dep.producer.enqueue_many([{"prompt": f"budget {i}"} for i in range(30)])
    done = dep.wait_all(jobs, timeout=120)
    stats = dep.stats()
    assert [job.state for job in done] == [JobState.STORED] * 30
    assert stats["max_record_info_per_s"] <= 10  # in every rolling second, at the upstream's end
    assert stats["record_info_rate_limited"] == 0
    assert stats["record_info_calls"] >= 30  # the budget was spent, not starved


def test_a_killed_poll_worker_forgets_no_task(dep: Deployment) -> None:
    poll = dep.start_worker("poll", concurrency=2)
    jobs = dep.producer.enqueue_many([{"prompt": f"orphaned check {i}"} for i in range(8)])
    plan = dep.producer.keys.poll_plan("default")
    wait_until(lambda: dep.producer.redis.zcard(plan) == 8, 30, "every job's check to be booked")
    # SIGKILL the worker and its pool: the poll messages it held (with their countdowns) stay unacked
    # in the broker until the visibility timeout, an hour away.
    os.killpg(poll.process.pid, signal.SIGKILL)
    poll.process.wait(timeout=10)
    dep.start_worker("poll", concurrency=2)
    runtime = Runtime.build(dep.settings.model_copy(update={"reconcile_poll_silent_s": 0.0}))
    try:
        counts = Reconciler(runtime, dep.producer.app).run()
    finally:
        runtime.close()
    assert counts.get("silent_poll", 0) >= 1
    done = dep.wait_all(jobs, timeout=90)
    assert [job.state for job in done] == [JobState.STORED] * 8
    assert dep.stats()["record_info_rate_limited"] == 0
