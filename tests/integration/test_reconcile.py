"""The reconciler re-drives jobs whose step was lost, against real workers, Redis, S3 and the simulator.

Each test puts a job record in the state a lost message or a dead worker leaves behind (the record is the
truth; no message exists for it), runs the reconciler once (thresholds 0), and checks the job then ends
where it should, with the case counted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, cast

import pytest

from core.jobs import Job, JobRequest, JobState
from core.keys import Keys
from core.messages import submit_message
from devstack.deployment import Deployment, deployment, must, wait_until
from workers.reconcile import Reconciler
from workers.runtime import Runtime
from workers.upstream import TaskState

pytestmark = pytest.mark.integration

IMMEDIATE = {
    "reconcile_submitting_stale_s": 0.0,
    "reconcile_poll_silent_s": 0.0,
    "reconcile_store_silent_s": 0.0,
    "reconcile_salvage_interval_s": 0.0,
}


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # These tests also ask the upstream directly, outside ImagineQ's shared recordInfo budget (as another
    # client of the key would): the simulator allows more than the real 10 per second for that.
    simulator_args = ("--gen-time", "0.3:0.8", "--video-bytes", "262144", "--record-info-per-s", "100")
    with deployment(tmp_path_factory.mktemp("reconcile"), simulator_args=simulator_args) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def rt(dep: Deployment) -> Iterator[Runtime]:
    runtime = Runtime.build(dep.settings.model_copy(update=IMMEDIATE))
    yield runtime
    runtime.close()


def reconcile(dep: Deployment, rt: Runtime, **options: Any) -> dict[str, int]:
    return Reconciler(rt, dep.producer.app, **options).run()


def orphan(rt: Runtime, prompt: str) -> Job:
    """A queued job record with no submit message (as a lost message leaves it)."""
    job, created = rt.jobs.create(JobRequest(prompt))
    assert created
    return job


def upstream_task(rt: Runtime, prompt: str, *, finished: bool = False) -> str:
    client = rt.upstream("default")
    task_id = client.create_task({"prompt": prompt, "aspect_ratio": "2:3", "mode": "normal"})
    if finished:
        wait_until(lambda: client.record_info(task_id).state is TaskState.SUCCESS, 30, "the upstream task")
    return task_id


def generating(rt: Runtime, job: Job, task_id: str) -> None:
    assert rt.jobs.transition(job.id, JobState.SUBMITTING, expect=JobState.QUEUED)
    assert rt.jobs.transition(
        job.id, JobState.GENERATING, expect=JobState.SUBMITTING, fields={"task_id": task_id, "account": "default"}
    )


def counter(rt: Runtime, case: str) -> int:
    return int(cast("str | None", rt.redis.hget(rt.keys.counters(), f"reconcile:{case}")) or 0)


def test_a_stale_submit_claim_goes_back_to_the_queue_and_is_stored(dep: Deployment, rt: Runtime):
    job = orphan(rt, "Claimed by a worker that died")
    rt.jobs.transition(job.id, JobState.SUBMITTING, expect=JobState.QUEUED, fields={"claim": "dead"})

    assert reconcile(dep, rt).get("stale_submit_requeued") == 1

    assert dep.producer.wait(job.id, timeout=60).state is JobState.STORED


def test_a_submit_that_died_after_its_slot_but_before_its_marker_gives_the_creation_back(rt: Runtime):
    """A slot was taken (lease and creation entry) and the worker died before writing create_sent_at (e.g.
    Redis went away in between): nothing was sent, so the recovery gives the creation back with the slot.
    Left spent, it would hold the requeued job back for up to an hour in a full window."""
    from workers.tasks.submit import recover_interrupted_submit

    job = orphan(rt, "Slot taken, then the worker died")
    assert rt.jobs.transition(job.id, JobState.SUBMITTING, expect=JobState.QUEUED, fields={"claim": "dead"})
    assert rt.quota.acquire_slot(job.id).account == "default"

    def spent() -> list[str]:
        entries = cast("list[str]", rt.redis.zrange(rt.keys.creations("default"), 0, -1))
        return [entry for entry in entries if entry.startswith(f"{job.id}:")]

    assert len(spent()) == 1

    recovered = recover_interrupted_submit(rt, must(rt.jobs.get(job.id)))

    assert recovered is not None and recovered.state is JobState.QUEUED
    assert spent() == [] and rt.redis.zscore(rt.keys.leases("default"), job.id) is None
    # It has no submit message (recovery leaves publishing to its caller): end it, so the lost-message
    # tests of this module count only their own jobs.
    assert rt.jobs.transition(job.id, JobState.CANCELED, expect=JobState.QUEUED, fields={"reason": "canceled"})


def test_a_stale_claim_after_create_task_was_sent_is_never_resubmitted(dep: Deployment, rt: Runtime):
    created_before = dep.stats()["created"]
    job = orphan(rt, "createTask may have gone out")
    rt.jobs.transition(job.id, JobState.SUBMITTING, expect=JobState.QUEUED)
    rt.jobs.update(job.id, expect=JobState.SUBMITTING, fields={"account": "default", "create_sent_at": time.time()})

    assert reconcile(dep, rt).get("stale_submit_unknown") == 1

    failed = must(rt.jobs.get(job.id))
    assert failed.state is JobState.FAILED and failed.reason == "outcome_unknown"
    assert dep.stats()["created"] == created_before


def test_a_generating_job_nobody_polls_is_polled_and_stored(dep: Deployment, rt: Runtime):
    job = orphan(rt, "Its poll message was lost")
    generating(rt, job, upstream_task(rt, "Its poll message was lost"))

    assert reconcile(dep, rt).get("silent_poll") == 1

    assert dep.producer.wait(job.id, timeout=60).state is JobState.STORED
    assert rt.redis.zscore(rt.keys.leases("default"), job.id) is None  # the lease put back is released


def test_a_completed_job_that_was_never_stored_is_stored(dep: Deployment, rt: Runtime):
    job = orphan(rt, "Its store message was lost")
    task_id = upstream_task(rt, "Its store message was lost", finished=True)
    generating(rt, job, task_id)
    url = rt.upstream("default").record_info(task_id).result_urls[0]
    rt.jobs.transition(job.id, JobState.DOWNLOADING, expect=JobState.GENERATING, fields={"result_url": url})

    assert reconcile(dep, rt).get("unstored") == 1

    assert dep.producer.wait(job.id, timeout=60).state is JobState.STORED


def test_a_timed_out_job_that_completes_later_is_salvaged(dep: Deployment, rt: Runtime):
    job = orphan(rt, "Slower than the deadline")
    task_id = upstream_task(rt, "Slower than the deadline", finished=True)
    generating(rt, job, task_id)
    rt.jobs.transition(
        job.id,
        JobState.FAILED,
        expect=JobState.GENERATING,
        fields={"reason": "timed_out", "error": "no terminal state after 900s"},
    )

    assert reconcile(dep, rt).get("salvaged") == 1

    stored = dep.producer.wait(job.id, timeout=60)
    assert stored.state is JobState.STORED and stored.reason is None
    assert counter(rt, "salvaged") >= 1


def timed_out(rt: Runtime, job: Job, *, failed_s_ago: float = 0.0) -> None:
    """Fail a generating job ``timed_out``, as if it had failed ``failed_s_ago`` seconds ago."""
    rt.jobs.transition(job.id, JobState.FAILED, expect=JobState.GENERATING, fields={"reason": "timed_out"})
    if failed_s_ago:
        rt.redis.zadd(rt.keys.state_index("failed"), {job.id: (time.time() - failed_s_ago) * 1000})


def test_salvage_asks_only_within_its_window(dep: Deployment, rt: Runtime):
    windowed = Runtime.build(rt.settings.model_copy(update={"reconcile_salvage_window_s": 100.0}))
    try:
        inside, outside = orphan(rt, "inside the window"), orphan(rt, "outside the window")
        for job, ago in ((inside, 95.0), (outside, 105.0)):
            generating(rt, job, upstream_task(rt, job.prompt, finished=True))
            timed_out(rt, job, failed_s_ago=ago)

        counts = reconcile(dep, windowed)
    finally:
        windowed.close()
    assert counts.get("salvaged") == 1
    assert dep.producer.wait(inside.id, timeout=60).state is JobState.STORED
    left = must(rt.jobs.get(outside.id))
    assert left.state is JobState.FAILED and "salvage_checked_at" not in left.extra and "salvage" not in left.extra


def test_salvage_gives_up_on_a_task_the_upstream_does_not_know_or_that_failed(dep: Deployment, rt: Runtime):
    unknown, failed = orphan(rt, "a task nobody knows"), orphan(rt, "a forbidden request")
    generating(rt, unknown, "task-the-upstream-never-made")
    failed_task = upstream_task(rt, "a forbidden scene")  # the simulator's moderation fails it
    generating(rt, failed, failed_task)
    wait_until(lambda: rt.upstream("default").record_info(failed_task).state is TaskState.FAIL, 30, "the moderation")
    timed_out(rt, unknown)
    timed_out(rt, failed)

    assert reconcile(dep, rt).get("salvage_checked", 0) >= 2
    assert must(rt.jobs.get(unknown.id)).extra.get("salvage") == "not_found"
    assert must(rt.jobs.get(failed.id)).extra.get("salvage") == "upstream_failed"

    # Settled: the next run asks about neither again.
    def asked() -> list[int]:
        per_task = dep.stats()["record_info_per_task"]
        return [per_task.get(task_id, 0) for task_id in ("task-the-upstream-never-made", failed_task)]

    before = asked()
    reconcile(dep, rt)
    assert asked() == before
    assert must(rt.jobs.get(unknown.id)).state is must(rt.jobs.get(failed.id)).state is JobState.FAILED


def test_leases_of_terminal_jobs_are_released_but_unknown_outcomes_stay_held(dep: Deployment, rt: Runtime):
    done = dep.producer.wait(dep.producer.enqueue("Finished long ago").id, timeout=60)
    unknown = orphan(rt, "Outcome unknown")
    rt.jobs.transition(unknown.id, JobState.SUBMITTING, expect=JobState.QUEUED)
    rt.jobs.transition(unknown.id, JobState.FAILED, expect=JobState.SUBMITTING, fields={"reason": "outcome_unknown"})
    leases = rt.keys.leases("default")
    far = (time.time() + 3600) * 1000
    rt.redis.zadd(leases, {done.id: far, unknown.id: far, "vanished-job": far})

    assert reconcile(dep, rt).get("terminal_lease") == 2

    assert rt.redis.zscore(leases, done.id) is None and rt.redis.zscore(leases, "vanished-job") is None
    assert rt.redis.zscore(leases, unknown.id) is not None


def test_a_queued_job_without_a_message_is_republished_after_two_scans(dep: Deployment, rt: Runtime):
    job = orphan(rt, "Its submit message was lost")

    first = reconcile(dep, rt, lost_min_age_s=0)
    assert first.get("lost_message_suspected") == 1 and "lost_message" not in first
    assert reconcile(dep, rt, lost_min_age_s=0).get("lost_message") == 1

    assert dep.producer.wait(job.id, timeout=60).state is JobState.STORED
    assert "lost_message_suspected" not in reconcile(dep, rt, lost_min_age_s=0)


def _held_by_a_worker(rt: Runtime, job: Job, *, delivered_s_ago: float) -> str:
    """The job's submit message as kombu keeps one a worker took (acks late): in the unacked hash, with
    its delivery time in the unacked index. A SIGKILLed worker leaves it there for the visibility timeout."""
    tag = f"test-tag-{job.id}"
    raw = json.loads(submit_message(job, keys=Keys("iq")).payload)
    rt.redis.hset("iq:celery:unacked", tag, json.dumps([raw, "submit", "submit"]))
    rt.redis.zadd("iq:celery:unacked_index", {tag: time.time() - delivered_s_ago})
    return tag


def test_a_queued_job_whose_message_a_dead_worker_holds_is_republished(dep: Deployment, rt: Runtime):
    """A worker SIGKILLed with a submit message reserved leaves the job queued and the message unacked
    for an hour: the job counts as having no message."""
    job = orphan(rt, "Its worker died holding its message")
    tag = _held_by_a_worker(rt, job, delivered_s_ago=10.0)  # older than reconcile_submitting_stale_s (0 here)
    try:
        assert reconcile(dep, rt, lost_min_age_s=0).get("lost_message_suspected") == 1
        assert reconcile(dep, rt, lost_min_age_s=0).get("lost_message") == 1
        assert dep.producer.wait(job.id, timeout=60).state is JobState.STORED
    finally:
        rt.redis.hdel("iq:celery:unacked", tag)
        rt.redis.zrem("iq:celery:unacked_index", tag)


def test_a_message_a_live_worker_holds_is_left_alone(dep: Deployment, rt: Runtime):
    patient = Runtime.build(rt.settings.model_copy(update={"reconcile_submitting_stale_s": 300.0}))
    job = orphan(rt, "Its worker is busy with it")
    tag = _held_by_a_worker(rt, job, delivered_s_ago=10.0)
    try:
        for _ in range(2):
            counts = Reconciler(patient, dep.producer.app, lost_min_age_s=0).run()
            assert "lost_message" not in counts and "lost_message_suspected" not in counts
        assert must(rt.jobs.get(job.id)).state is JobState.QUEUED
    finally:
        rt.redis.hdel("iq:celery:unacked", tag)
        rt.redis.zrem("iq:celery:unacked_index", tag)
        rt.jobs.transition(job.id, JobState.CANCELED, expect=JobState.QUEUED)
        patient.close()


def test_a_child_whose_release_was_lost_is_released_when_its_parent_has_ended(dep: Deployment, rt: Runtime):
    # Given a parent and a child waiting for it, and the record of who waits for the parent lost (as a
    # release thread that died between the parent's end and the release leaves it).
    parent = orphan(rt, "a parent that will be canceled")
    child, created = rt.jobs.create(
        JobRequest(model="upscale", input={"parent": parent.id}, waits=True, parent_output="video")
    )
    assert created and child.state is JobState.WAITING
    rt.redis.delete(rt.keys.children(parent.id))
    assert rt.jobs.transition(parent.id, JobState.CANCELED, expect=JobState.QUEUED, fields={"reason": "canceled"})
    assert must(rt.jobs.get(child.id)).state is JobState.WAITING
    before = counter(rt, "waiting_released")
    # When the reconciler runs (its grace for the release threads passed).
    reconcile(dep, rt, release_grace_s=0.0)
    # Then the child failed as its parent's end says, without reaching the upstream.
    done = must(rt.jobs.get(child.id))
    assert (done.state, done.reason, done.task_id) == (JobState.FAILED, "parent_canceled", None)
    assert counter(rt, "waiting_released") == before + 1
