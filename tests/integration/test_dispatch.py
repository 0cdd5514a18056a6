"""Which job goes next: the dispatch script against a real Redis, with the ready sets a producer fills."""

from __future__ import annotations

import time
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
    assert sorted(must(d.job_id) for d in taken if d.pool == "text-to-video") == sorted(videos[:2])
    assert sorted(must(d.job_id) for d in taken if d.pool == "text-to-image") == sorted(images[:3])
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
    enqueue(jobs, JobRequest("pinned", pin="b"))
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


def test_an_abandoned_take_gives_back_the_creation_it_spent(redis_client: redis.Redis, jobs: JobStore) -> None:
    """A submitter that vanished between the take and the claim sent nothing: once its lease has lapsed,
    the job's next take must not spend a second creation of the window for one job."""
    clock = [time.time() * 1000 - 60_000]  # a minute ago: the take is past any grace by Redis's clock
    limiter = QuotaLimiter(
        redis_client,
        KEYS,
        [account(max_creations_per_window=2, create_requests_per_window=5)],
        lease_ttl_s=10,
        clock=lambda: int(clock[0]),
    )
    first, second = enqueue(jobs, JobRequest("orphan"), JobRequest("next"))
    assert limiter.dispatch().job_id == first  # the submitter dies before claiming it
    clock[0] += 20_000  # past the lease: a lapsed lease is not reused by the next take
    assert jobs.make_ready(must_get(jobs, first), taken_grace_s=0, accounts=["a"])
    creations = KEYS.creations("a", "text-to-video")
    assert redis_client.zcard(creations) == 0
    assert redis_client.zcard(KEYS.create_requests("a")) == 0
    assert redis_client.zcard(KEYS.creation_log()) == 0
    assert limiter.dispatch().job_id == first
    assert limiter.dispatch().job_id == second  # the window of 2 still had room for both
    assert redis_client.zcard(creations) == 2


def test_a_claimed_job_back_in_the_queue_keeps_its_spent_creation(redis_client: redis.Redis, jobs: JobStore) -> None:
    """A job claimed after its take may have had its createTask sent (a transient error, retried later):
    putting it back gives nothing back."""
    limiter = QuotaLimiter(redis_client, KEYS, [account()], clock=lambda: int(time.time() * 1000) - 60_000)
    [job_id] = enqueue(jobs, JobRequest("claimed"))
    assert limiter.dispatch().job_id == job_id
    assert jobs.transition(job_id, JobState.SUBMITTING, expect=JobState.QUEUED)
    assert jobs.transition(job_id, JobState.QUEUED, expect=JobState.SUBMITTING, ready=False)
    assert jobs.make_ready(must_get(jobs, job_id), taken_grace_s=0, accounts=["a"])
    assert redis_client.zcard(KEYS.creations("a", "text-to-video")) == 1


# -- fair share ------------------------------------------------------------------------------------------


def weighted_jobs(redis_client: redis.Redis, weights: dict[str, float]) -> JobStore:
    return JobStore(redis_client, KEYS, weight_of=lambda owner: weights.get(owner or "", 1.0))


def test_creations_follow_the_weights_with_both_backlogs_deep(redis_client: redis.Redis) -> None:
    jobs = weighted_jobs(redis_client, {"a": 1.0, "b": 3.0})
    limiter = QuotaLimiter(redis_client, KEYS, [account(max_in_progress=1000, max_creations_per_window=1000)])
    enqueue(jobs, *(JobRequest(f"a {i}", owner="a") for i in range(400)))
    enqueue(jobs, *(JobRequest(f"b {i}", owner="b") for i in range(400)))
    owners = [must_get(jobs, limiter.dispatch().job_id).owner for _ in range(200)]
    share_b = owners.count("b") / len(owners)
    assert abs(share_b - 0.75) <= 0.05 * 0.75, owners.count("b")


def test_a_principal_arriving_behind_a_deep_backlog_goes_next(redis_client: redis.Redis, jobs: JobStore) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account(max_in_progress=1000, max_creations_per_window=1000)])
    enqueue(jobs, *(JobRequest(f"bulk {i}", owner="bulk") for i in range(5000)))
    for _ in range(30):
        limiter.dispatch()  # the backlog is being served
    [urgent] = enqueue(jobs, JobRequest("one of mine", owner="small"))
    assert limiter.dispatch().job_id == urgent
    assert redis_client.zlexcount(KEYS.waiting(), "[bulk|", "(bulk}") == 5000 - 30  # type: ignore[no-untyped-call]


def test_an_aged_batch_job_is_served_before_the_interactive_stream(redis_client: redis.Redis, jobs: JobStore) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account(max_in_progress=1000)], aging_s=0.3)
    [old_batch] = enqueue(jobs, JobRequest("nightly", priority=Priority.BATCH))
    stream = enqueue(jobs, *(JobRequest(f"live {i}", owner="web") for i in range(3)))
    assert limiter.dispatch().job_id == stream[0]  # not aged yet: interactive first
    time.sleep(0.35)
    assert limiter.dispatch().job_id == old_batch  # aged: it competes as interactive, and goes now
    assert [limiter.dispatch().job_id for _ in range(2)] == stream[1:]


def test_a_share_cap_holds_the_principals_slots_in_each_pool(redis_client: redis.Redis, jobs: JobStore) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account(max_in_progress=4)], share_caps={"greedy": 0.5})
    enqueue(jobs, *(JobRequest(f"g {i}", owner="greedy") for i in range(10)))
    taken = [limiter.dispatch() for _ in range(3)]
    assert [d.job_id is not None for d in taken] == [True, True, False]  # 2 of 4 slots, though 2 are free
    others = enqueue(jobs, JobRequest("fair", owner="other"))
    assert limiter.dispatch().job_id == others[0]
    limiter.release("a", must(taken[0].job_id))
    assert must_get(jobs, limiter.dispatch().job_id).owner == "greedy"  # its slot back, its next job goes


def must(value: str | None) -> str:
    assert value is not None
    return value


def must_get(jobs: JobStore, job_id: str | None) -> Any:
    job = jobs.get(must(job_id))
    assert job is not None
    return job
