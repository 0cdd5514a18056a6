"""Quotas hold across real worker processes: the stress test, cooldowns, dead workers, a paused backlog."""

from __future__ import annotations

import json
import time
from typing import cast

import psutil
import pytest

from core.jobs import JobState
from core.quota import QuotaLimiter
from devstack.deployment import deployment, wait_until

pytestmark = pytest.mark.integration


def _account(**limits: object) -> str:
    return json.dumps([{"name": "main", "api_key": "sim-key", "base_url": "{simulator}", **limits}])


def test_three_submit_workers_never_exceed_the_upstream_limits(tmp_path):
    # Given a simulator enforcing 30 in progress and 40 creations per 20 s window,
    # and 3 submit worker processes x concurrency 4 sharing one account.
    limits = {
        "max_in_progress": 30,
        "max_creations_per_window": 40,
        "creation_window_s": 20,
        "record_info_per_s": 200,
        "window_guard_s": 1.0,
    }
    with deployment(
        tmp_path,
        simulator_args=(
            "--gen-time",
            "1:3",
            "--video-bytes",
            "4096",
            "--max-in-progress",
            "30",
            "--max-per-window",
            "40",
            "--window-s",
            "20",
            "--record-info-per-s",
            "200",
        ),
        env={"IMAGINEQ_ACCOUNTS": _account(**limits)},
        workers={"poll": 4, "store": 2},
    ) as dep:
        for _ in range(3):
            dep.start_worker("submit", concurrency=4)
        # When 60 jobs arrive at once (more than a window's worth).
        jobs = dep.producer.enqueue_many([{"prompt": f"stress {i}"} for i in range(60)])
        done = dep.wait_all(jobs, timeout=120)
        stats = dep.stats()
    # Then every job is stored, the upstream never had to refuse one, and no limit was crossed.
    assert [job.state for job in done] == [JobState.STORED] * 60
    assert stats["rate_limited"] == 0
    assert stats["peak_in_progress"] <= 30
    assert stats["max_creations_in_window"] <= 40
    assert stats["created"] == 60


def test_a_429_holds_back_every_submitter_for_its_retry_after(tmp_path):
    with deployment(tmp_path, workers={"submit": 4, "poll": 2, "store": 1}) as dep:
        dep.sim_config(force_status={"code": 429, "count": 1, "endpoint": "createTask", "retry_after_s": 3})
        first = dep.producer.enqueue("meets the 429")
        cooldown_key = dep.producer.keys.cooldown("default")
        wait_until(lambda: dep.producer.redis.exists(cooldown_key) == 1, 30, "the cooldown")
        # When the cooldown ends, as the limiter wrote it (ms on the Redis clock, this machine's clock).
        cooldown_end_ms = float(cast(str, dep.producer.redis.get(cooldown_key)))
        others = dep.producer.enqueue_many([{"prompt": f"waits {i}"} for i in range(8)])
        done = dep.wait_all([first, *others], timeout=60)
        tasks = dep.sim("tasks")
    assert [job.state for job in done] == [JobState.STORED] * 9
    assert done[0].submit_attempts == 0  # a cooldown never counts against the job
    created_ms = [task["createTime"] for task in (tasks["tasks"] if isinstance(tasks, dict) else tasks)]
    # Nothing was created while the cooldown ran: the simulator stamps createTime with the same clock.
    assert min(created_ms) >= cooldown_end_ms - 5  # a few ms: the two read the clock at different moments


def test_a_killed_workers_leases_return_after_the_lease_ttl(tmp_path):
    with deployment(
        tmp_path,
        simulator_args=("--gen-time", "60:60", "--video-bytes", "4096"),
        env={"IMAGINEQ_ACCOUNTS": _account(max_in_progress=2), "IMAGINEQ_QUOTA_LEASE_TTL_S": "2"},
        workers={"submit": 1, "poll": 1},
    ) as dep:
        jobs = dep.producer.enqueue_many([{"prompt": "first"}, {"prompt": "second"}])
        ids = [job.id for job in jobs]
        wait_until(
            lambda: all(j.state is JobState.GENERATING for j in dep.producer.jobs.get_many(ids)), 30, "both generating"
        )
        quota = QuotaLimiter(dep.producer.redis, dep.producer.keys, dep.settings.accounts, lease_ttl_s=2)
        assert quota.snapshot()[0].in_progress == 2
        # When every worker that renews those leases dies at once.
        for service in dep.workers["poll"] + dep.workers["submit"]:
            service.kill()
        killed_at = time.monotonic()
        # Then the slots come back once the lease TTL has passed, and a new worker uses one.
        wait_until(lambda: quota.snapshot()[0].in_progress == 0, 10, "the leases to lapse")
        assert time.monotonic() - killed_at >= 1.0
        third = dep.producer.enqueue("third")
        dep.start_worker("submit", concurrency=1)
        wait_until(lambda: dep.producer.get(third.id).state is JobState.GENERATING, 30, "the third job to go")


def test_a_paused_account_keeps_its_backlog_in_redis_and_worker_memory_flat(tmp_path):
    # Given an account without credits (402 → paused) and 5,000 jobs queued.
    with deployment(
        tmp_path,
        simulator_args=("--credits", "0", "--gen-time", "1:2"),
        # Production's in-task quota wait (20 s): each process holds one message, then re-publishes it.
        env={"IMAGINEQ_PAUSE_CHECK_INTERVAL_S": "1"},
        workers={},
    ) as dep:
        jobs = dep.producer.enqueue_many([{"prompt": f"backlog {i}"} for i in range(5000)])
        submit = dep.start_worker("submit", concurrency=2)
        queue = f"{dep.settings.redis_prefix}:celery:submit"
        wait_until(lambda: dep.producer.redis.exists(dep.producer.keys.pause("default")) == 1, 30, "a pause")
        # When the workers run for a while against the paused account.
        time.sleep(3)  # warm-up: each pool process builds its clients on its first task
        samples = []
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            samples.append(_tree_rss(submit.process.pid))
            time.sleep(0.5)
        depth = dep.producer.redis.llen(queue)
        counts = dep.producer.jobs.count_by_state()
        # Then the messages stay in Redis (a few per worker process are out: prefetch 1 plus the one
        # being re-published), memory stays flat, and no job used up a retry waiting.
        assert depth >= 5000 - 2 * 2
        assert counts[JobState.QUEUED] + counts[JobState.SUBMITTING] == 5000
        assert max(samples) - samples[0] < 10 * 1024 * 1024, [s // 1024 for s in samples]
        sample = dep.producer.jobs.get_many([job.id for job in jobs[:50]])
        assert all(job is not None and job.submit_attempts == 0 for job in sample)


def _tree_rss(pid: int) -> int:
    parent = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
