"""Which job goes next: the dispatch script against a real Redis, with the ready sets a producer fills."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from pydantic import SecretStr

from config.settings import AccountSettings
from core.jobs import JobRequest, JobState, Priority
from core.jobstore import JobStore
from core.keys import Keys
from core.messages import submit_message
from core.quota import QuotaLimiter

pytestmark = pytest.mark.integration

KEYS = Keys("iqdispatch")


def account(name: str = "a", **limits: Any) -> AccountSettings:
    return AccountSettings(name=name, api_key=SecretStr("test-key"), **{"window_guard_s": 0.0, **limits})


@pytest.fixture
def jobs(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, KEYS)


def enqueue(jobs: JobStore, *requests: JobRequest) -> list[str]:
    made = jobs.create_many(list(requests), message=lambda job: submit_message(job, keys=KEYS))
    return [job.id for job, _ in made]


def test_a_full_pool_never_holds_back_another_pools_jobs(redis_client: redis.Redis, jobs: JobStore) -> None:
    limiter = QuotaLimiter(
        redis_client, KEYS, [account(max_in_progress=2, pools={"text-to-image": {"max_in_progress": 3}})]
    )
    videos = enqueue(jobs, *(JobRequest(f"video {i}") for i in range(4)))
    images = enqueue(jobs, *(JobRequest(f"image {i}", model="text-to-image") for i in range(4)))

    taken = [limiter.dispatch() for _ in range(5)]
    assert [d.job_id for d in taken] == [videos[0], videos[1], images[0], images[1], images[2]]
    assert [d.pool for d in taken] == ["text-to-video"] * 2 + ["text-to-image"] * 3
    refused = limiter.dispatch()
    assert refused.job_id is None and refused.reason == "in_progress" and not refused.empty
    limiter.release("a", images[0], pool="text-to-image")
    assert limiter.dispatch().job_id == images[3]  # the video pool is still full: the image goes
    snapshot = {q.pool: (q.in_progress, q.in_progress_limit) for q in limiter.snapshot(pool=None)}
    assert snapshot["text-to-video"] == (2, 2) and snapshot["text-to-image"] == (3, 3)


def test_the_first_job_by_rank_goes_an_interactive_one_before_every_batch_one(
    redis_client: redis.Redis, jobs: JobStore
) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account()])
    batch = enqueue(jobs, *(JobRequest(f"batch {i}", priority=Priority.BATCH) for i in range(3)))
    urgent = enqueue(jobs, JobRequest("urgent"))
    order = [limiter.dispatch().job_id for _ in range(4)]
    assert order == [urgent[0], *batch]
    assert limiter.dispatch().empty  # nothing left: the ticket is spent


def test_a_job_leaves_its_ready_set_when_canceled_and_comes_back_when_queued_again(
    redis_client: redis.Redis, jobs: JobStore
) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account()])
    first, second = enqueue(jobs, JobRequest("one"), JobRequest("two"))
    assert jobs.transition(first, JobState.CANCELED, expect=JobState.QUEUED)
    assert limiter.dispatch().job_id == second
    assert jobs.transition(second, JobState.SUBMITTING, expect=JobState.QUEUED)
    assert jobs.transition(second, JobState.QUEUED, expect=JobState.SUBMITTING)  # e.g. a cooldown
    assert redis_client.zscore(KEYS.ready("text-to-video"), second) is not None
    assert redis_client.zscore(KEYS.dispatched(), second) is None
    assert limiter.dispatch().job_id == second


def test_a_pinned_job_goes_only_to_its_account(redis_client: redis.Redis, jobs: JobStore) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account("a", max_in_progress=5), account("b", max_in_progress=5)])
    [job_id] = enqueue(jobs, JobRequest("pinned"))
    redis_client.hset(KEYS.pins("text-to-video"), job_id, "b")
    assert limiter.dispatch().account == "b"


def test_the_create_rate_holds_across_pools(redis_client: redis.Redis, jobs: JobStore) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account(create_requests_per_window=3, create_requests_window_s=60)])
    enqueue(jobs, *(JobRequest(f"v {i}") for i in range(2)))
    enqueue(jobs, *(JobRequest(f"i {i}", model="text-to-image") for i in range(2)))
    assert [limiter.dispatch().job_id is not None for _ in range(3)] == [True, True, True]
    refused = limiter.dispatch()
    assert refused.job_id is None and refused.reason == "requests" and 50 < refused.wait_s <= 60


def test_a_taken_job_whose_submitter_died_is_ready_again(redis_client: redis.Redis, jobs: JobStore) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account()])
    [job_id] = enqueue(jobs, JobRequest("orphan"))
    assert limiter.dispatch().job_id == job_id  # the submitter dies before moving the job on
    job = jobs.get(job_id)
    assert job is not None
    assert not jobs.make_ready(job)  # just taken: its taker may still move it
    assert jobs.make_ready(job, taken_grace_s=0)
    assert limiter.dispatch().job_id == job_id
