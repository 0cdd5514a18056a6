"""Fair share with real workers: principals share the creations by weight, a newcomer behind a deep backlog
waits about one slot turnover, aging lifts a batch job past an interactive stream, and a share cap holds
at the simulator's end."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.jobs import Job, JobState, Priority
from devstack.deployment import Deployment, deployment, must, wait_until

pytestmark = pytest.mark.integration

PRINCIPALS = [
    {"name": "light", "token": "light-token-0123456789abcdef", "weight": 1},
    {"name": "heavy", "token": "heavy-token-0123456789abcdef", "weight": 3},
    {"name": "capped", "token": "capped-token-0123456789abcdef", "max_slot_share": 0.5},
    {"name": "newcomer", "token": "newcomer-token-0123456789abc"},
]


def fair_deployment(tmp_path: Path, *, slots: int = 4, extra: dict[str, str] | None = None, **kw: Any) -> Any:
    accounts = [{"name": "main", "api_key": "sim-key", "base_url": "{simulator}", "max_in_progress": slots}]
    return deployment(
        tmp_path,
        simulator_args=("--gen-time", "0.4:0.6", "--video-bytes", "4096", "--max-in-progress", str(slots)),
        env={
            "IMAGINEQ_ACCOUNTS": json.dumps(accounts),
            "IMAGINEQ_INGRESS_PRINCIPALS": json.dumps(PRINCIPALS),
            "IMAGINEQ_SUBMIT_RATE_LIMIT": "0/s",
            **(extra or {}),
        },
        **kw,
    )


def enqueue_as(dep: Deployment, owner: str, count: int, **fields: Any) -> list[Job]:
    producer = dep.producer
    requests = producer.prepare([{"prompt": f"{owner} {i}", **fields} for i in range(count)], owner=owner)
    return [job for job, _ in producer.enqueue_prepared(requests)]


def created_order(dep: Deployment, jobs: list[Job]) -> list[Job]:
    """The jobs that reached the upstream, in the order their tasks were created there."""
    known = {job.id: job for job in dep.producer.jobs.get_many([job.id for job in jobs]) if job is not None}
    by_task = {job.task_id: job for job in known.values() if job.task_id}
    tasks = sorted(dep.sim("tasks")["tasks"], key=lambda task: task["createTime"])
    return [by_task[task["taskId"]] for task in tasks if task["taskId"] in by_task]


@pytest.fixture
def dep(tmp_path: Path) -> Iterator[Deployment]:
    # Two submit workers of two processes each: the shares must hold whoever dispatches.
    with fair_deployment(tmp_path, workers={"submit": 2, "poll": 2, "store": 2}) as deployed:
        deployed.start_worker("submit", concurrency=2)
        yield deployed


def test_creations_follow_the_weights_one_to_three(dep: Deployment) -> None:
    light = enqueue_as(dep, "light", 150)
    heavy = enqueue_as(dep, "heavy", 150)
    everyone = light + heavy
    wait_until(lambda: len(created_order(dep, everyone)) >= 200, 120, "200 creations")
    first = created_order(dep, everyone)[:200]
    heavy_share = sum(job.owner == "heavy" for job in first) / len(first)
    assert abs(heavy_share - 0.75) <= 0.05 * 0.75, heavy_share


def test_a_newcomer_behind_a_deep_backlog_waits_about_one_slot_turnover(dep: Deployment) -> None:
    enqueue_as(dep, "light", 5000)
    wait_until(lambda: dep.producer.jobs.count_by_state()[JobState.GENERATING] >= 3, 60, "the backlog to run")
    waits = []
    for _ in range(20):
        [job] = enqueue_as(dep, "newcomer", 1)

        def taken(job: Job = job) -> bool:
            return must(dep.producer.get(job.id)).state is not JobState.QUEUED

        wait_until(taken, 30, "the newcomer's job")
        started = must(dep.producer.get(job.id)).timestamps[JobState.SUBMITTING.value]
        waits.append(started - job.created_at)
        time.sleep(0.3)
    # One slot turnover: at most the longest generation (0.6 s) and the way back (a poll, a release).
    assert max(waits) <= 2.0, sorted(waits)


def test_aging_lifts_a_batch_job_past_a_steady_interactive_stream(tmp_path: Path) -> None:
    with fair_deployment(
        tmp_path, slots=2, extra={"IMAGINEQ_FAIR_SHARE_AGING_S": "3"}, workers={"submit": 2, "poll": 2, "store": 2}
    ) as dep:
        enqueue_as(dep, "light", 400)  # interactive work that never runs out during the test
        wait_until(lambda: dep.producer.jobs.count_by_state()[JobState.GENERATING] >= 2, 60, "the stream to run")
        [nightly] = dep.producer.enqueue_many([{"prompt": "a nightly job", "priority": Priority.BATCH.value}])
        wait_until(lambda: must(dep.producer.get(nightly.id)).state is not JobState.QUEUED, 30, "the aged batch job")
        waited = must(dep.producer.get(nightly.id)).timestamps[JobState.SUBMITTING.value] - nightly.created_at
        assert 3.0 <= waited <= 6.0, waited
        assert dep.producer.jobs.count_by_state()[JobState.QUEUED] > 100  # interactive work was still waiting


def test_a_share_cap_holds_at_the_upstream(tmp_path: Path) -> None:
    with fair_deployment(tmp_path, slots=4, workers={"submit": 4, "poll": 2, "store": 2}) as dep:
        capped = enqueue_as(dep, "capped", 40)
        done = dep.wait_all(capped, timeout=120)
        assert all(job.state is JobState.STORED for job in done)
        task_ids = {job.task_id for job in done}
        edges: list[tuple[float, int]] = []
        for task in dep.sim("tasks")["tasks"]:
            if task["taskId"] in task_ids:
                edges += [(task["createTime"], 1), (task["completeTime"], -1)]
        running = peak = 0
        for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):
            running += step
            peak = max(peak, running)
        assert peak == 2  # half of 4 slots, though the other two stood free
