"""Callbacks end to end: simulator → real uvicorn web → Redis → real Celery workers → S3.

The workers get ``IMAGINEQ_CALLBACKS__PUBLIC_BASE_URL`` pointing at the web process, so every createTask
carries a per-job callBackUrl; the simulator signs its callbacks with the same HMAC key as the web.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import pytest
import requests

from devstack import services
from tests.integration.deployment import Deployment, deployment, must, wait_until
from workers.jobs import JobState

pytestmark = pytest.mark.integration

HMAC_KEY = "e2e-hmac-key"
VIDEO_BYTES = 131072


@contextmanager
def callback_deployment(log_dir: Path, **poll: str) -> Iterator[tuple[Deployment, str]]:
    port = services.free_port()
    env = {
        "IMAGINEQ_CALLBACKS__PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "IMAGINEQ_CALLBACKS__HMAC_KEY": HMAC_KEY,
        "IMAGINEQ_INGRESS_TOKENS": json.dumps(["e2e-token"]),
        **{f"IMAGINEQ_POLL__{name.upper()}": value for name, value in poll.items()},
    }
    simulator_args = (
        "--gen-time",
        "0.3:0.8",
        "--video-bytes",
        str(VIDEO_BYTES),
        "--hmac-key",
        HMAC_KEY,
        "--callback-backoff-s",
        "0.2",
    )
    with deployment(log_dir, simulator_args=simulator_args, env=env) as dep:
        web = services.start_web(dep.stack, dep.env, port=port)
        yield dep, web.url


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, str]]:
    """Callbacks with a safety-net poll that first looks after 3 s, then every second."""
    with callback_deployment(tmp_path_factory.mktemp("callbacks"), safety_first_s="3", safety_interval_s="1") as d:
        yield d


@pytest.fixture
def dep(net: tuple[Deployment, str]) -> Iterator[Deployment]:
    deployed, _ = net
    yield deployed
    deployed.sim_config(drop_callbacks=False, delay_s=0, callback_duplicates=0.0)


def _record_info_calls(dep: Deployment, task_ids: list[str]) -> list[int]:
    per_task = dep.stats()["record_info_per_task"]
    return [per_task.get(task_id, 0) for task_id in task_ids]


def _counters(dep: Deployment) -> dict[str, int]:
    raw = cast("dict[str, str]", dep.producer.redis.hgetall(dep.producer.keys.counters()))
    return {name: int(value) for name, value in raw.items()}


def test_callbacks_complete_jobs_without_a_single_record_info(dep: Deployment):
    jobs = dep.producer.enqueue_many([{"prompt": f"A kite number {i} over the dunes"} for i in range(10)])
    done = dep.wait_all(jobs, timeout=60)
    assert all(job.state is JobState.STORED for job in done), [(j.state, j.error) for j in done]
    assert _record_info_calls(dep, [must(job.task_id) for job in done]) == [0] * 10
    assert _counters(dep)["callback:applied"] >= 10


def test_a_failure_callback_fails_the_job_with_the_upstream_reason(dep: Deployment):
    job = dep.producer.wait(dep.producer.enqueue("a forbidden scene").id, timeout=60)
    assert job.state is JobState.FAILED and job.reason == "generation_failed"
    assert "forbidden" in (job.fail_msg or "")
    assert _record_info_calls(dep, [must(job.task_id)]) == [0]


def test_duplicate_deliveries_are_answered_and_ignored(dep: Deployment):
    dep.sim_config(callback_duplicates=1.0)
    before = _counters(dep).get("callback:duplicate", 0)
    jobs = dep.wait_all(dep.producer.enqueue_many([{"prompt": f"twice told {i}"} for i in range(4)]), 60)
    assert all(job.state is JobState.STORED for job in jobs)
    wait_until(lambda: _counters(dep).get("callback:duplicate", 0) >= before + 4, 20, "the duplicates")
    assert dep.stats()["callbacks_failed"] == 0


def test_lost_callbacks_are_caught_by_the_safety_net_poll(dep: Deployment):
    dep.sim_config(drop_callbacks=True)
    jobs = dep.wait_all(dep.producer.enqueue_many([{"prompt": f"lost letter {i}"} for i in range(3)]), 60)
    assert all(job.state is JobState.STORED for job in jobs)
    calls = _record_info_calls(dep, [must(job.task_id) for job in jobs])
    # First look after safety_first_s (the task is long done by then): one call is enough.
    assert all(1 <= n <= 2 for n in calls), calls
    for job in jobs:
        assert job.timestamps["downloading"] - job.timestamps["generating"] >= 2.9


def test_a_callback_before_submit_recorded_the_task_id_still_completes_the_job(dep: Deployment):
    # The simulator creates the task, then holds createTask's answer 1.5 s: the task completes and its
    # callback arrives while the job is still submitting.
    dep.sim_config(delay_s=1.5)
    before = _counters(dep).get("callback:early", 0)
    job = dep.producer.enqueue("An impatient upstream")
    job = dep.producer.wait(job.id, timeout=60)
    assert job.state is JobState.STORED, (job.state, job.error)
    assert _counters(dep)["callback:early"] == before + 1
    assert _record_info_calls(dep, [must(job.task_id)]) == [0]


def test_the_web_answers_the_health_check_with_the_workers_it_saw(net: tuple[Deployment, str]):
    _, url = net
    wait_until(lambda: requests.get(f"{url}/healthz", timeout=5).json()["status"] == "ok", 30, "workers")


def test_callback_and_poll_racing_store_each_job_exactly_once(tmp_path: Path):
    # Polls every 0.2 s from the start, and every callback delivered twice: three actors per job race.
    with callback_deployment(tmp_path, safety_first_s="0.2", safety_interval_s="0.2") as (dep, _):
        dep.sim_config(callback_duplicates=1.0)
        jobs = dep.wait_all(dep.producer.enqueue_many([{"prompt": f"contested {i}"} for i in range(16)]), 90)
        assert all(job.state is JobState.STORED for job in jobs), [(j.state, j.error) for j in jobs]
        counters = _counters(dep)
        assert counters["bytes_stored"] == 16 * VIDEO_BYTES  # one upload per job
        assert dep.stats()["downloads"] == 16  # the result file was fetched once per job
        for job in jobs:
            bucket, key = must(job.s3_uri).removeprefix("s3://").split("/", 1)
            listed = dep.s3.list_objects_v2(Bucket=bucket, Prefix=key.removesuffix(".mp4"))
            assert sorted(o["Key"] for o in listed["Contents"]) == sorted([key, key.removesuffix(".mp4") + ".json"])
        logs = "".join(w.log_path.read_text(errors="replace") for w in dep.workers["store"] if w.log_path)
        assert all(logs.count(f"store: job {job.id} stored at") == 1 for job in jobs)
        assert sum(_record_info_calls(dep, [must(job.task_id) for job in jobs])) > 0  # polls did race
