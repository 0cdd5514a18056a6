"""JobStore against a real Redis: creation, idempotency, the state CAS, expiry and the indexes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.connection import Connection

from core.jobs import JobRequest, JobState, Priority
from core.jobstore import TASK_INDEX_SLACK_S, JobStore
from core.keys import Keys

pytestmark = pytest.mark.integration

S = JobState
KEYS = Keys("t")


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, KEYS, terminal_ttl_s=3600)


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def advance(store: JobStore, job_id: str, *states: JobState, **fields: str) -> None:
    for state in states:
        assert store.transition(job_id, state, fields=fields if state is S.GENERATING else None)


def test_create_then_get(store, redis_client):
    job, created = store.create(JobRequest("a cat", mode="fun", metadata={"line": 3}, batch_id="b1"))
    assert created and job.state is S.QUEUED and len(job.id) == 32
    assert abs(job.created_at - time.time()) < 5
    assert store.get(job.id) == job
    assert redis_client.zscore(KEYS.state_index("queued"), job.id) == pytest.approx(job.created_at * 1000, abs=1)
    assert store.get("nope") is None


def test_queued_record_is_compact(store, redis_client):
    job, _ = store.create(JobRequest("a cat surfing a wave at sunset, cinematic"))
    assert set(redis_client.hkeys(KEYS.job(job.id))) == {
        "id",
        "state",
        "prompt",
        "model",
        "input",
        "priority",
        "created_at",
    }
    assert redis_client.memory_usage(KEYS.job(job.id)) < 400


def test_same_idempotency_key_returns_the_same_job(store):
    first, created = store.create(JobRequest("p", idempotency_key="k1"))
    again, created_again = store.create(JobRequest("other prompt", idempotency_key="k1"))
    assert created and not created_again
    assert again == first
    [(one, c1), (two, c2), (three, c3)] = store.create_many(
        [
            JobRequest("x", idempotency_key="k2"),
            JobRequest("x", idempotency_key="k1"),
            JobRequest("x", idempotency_key="k2"),
        ]
    )
    assert (c1, c2, c3) == (True, False, False)
    assert two.id == first.id and three.id == one.id


def test_idempotency_key_outliving_its_record_is_taken_over(store, redis_client):
    old, _ = store.create(JobRequest("p", idempotency_key="k"))
    redis_client.delete(KEYS.job(old.id))
    new, created = store.create(JobRequest("p", idempotency_key="k"))
    assert created and new.id != old.id
    assert redis_client.get(KEYS.idempotency("k")) == new.id


def test_create_many_is_one_round_trip_per_chunk(store, redis_client, monkeypatch):
    store.create(JobRequest("warm up: scripts loaded"))
    sends = 0
    original = Connection.send_packed_command

    def counting(self: Connection, command: Any, check_health: bool = True) -> Any:
        nonlocal sends
        sends += 1
        return original(self, command, check_health)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    results = store.create_many([JobRequest(f"prompt {i}", priority=Priority.BATCH) for i in range(1000)])
    monkeypatch.undo()
    assert sends == 2  # 1,000 jobs in chunks of 500
    assert len({job.id for job, created in results if created}) == 1000
    assert store.count_by_state()[S.QUEUED] == 1001
    assert store.get(results[-1][0].id) == results[-1][0]


def test_legal_transition_writes_state_timestamp_and_fields(store, redis_client):
    job, _ = store.create(JobRequest("p"))
    assert store.transition(job.id, S.SUBMITTING, expect=S.QUEUED, fields={"claim": "w1", "account": "a"})
    moved = store.get(job.id)
    assert moved is not None
    assert moved.state is S.SUBMITTING and moved.attempts == 1 and moved.account == "a"
    assert moved.extra == {"claim": "w1"}
    assert moved.timestamps["submitting"] >= job.created_at and moved.updated_at == moved.timestamps["submitting"]
    assert redis_client.zscore(KEYS.state_index("queued"), job.id) is None
    assert redis_client.zscore(KEYS.state_index("submitting"), job.id) is not None
    assert store.transition(job.id, S.QUEUED, expect=S.SUBMITTING, fields={"claim": None})
    assert "claim" not in redis_client.hkeys(KEYS.job(job.id))


def test_illegal_or_unexpected_transitions_write_nothing(store, redis_client):
    job, _ = store.create(JobRequest("p"))
    before = redis_client.hgetall(KEYS.job(job.id))
    assert not store.transition(job.id, S.STORED, fields={"s3_uri": "s3://x"})  # queued → stored: not allowed
    assert not store.transition(job.id, S.CANCELED, expect=S.GENERATING)  # allowed, but not what we expect
    assert not store.transition(job.id, S.GENERATING, expect=S.QUEUED)  # expect not a source of the target
    assert not store.update(job.id, expect=S.SUBMITTING, fields={"account": "a"})
    assert not store.transition("missing", S.SUBMITTING)
    assert redis_client.hgetall(KEYS.job(job.id)) == before
    assert not redis_client.exists(KEYS.job("missing"))
    assert redis_client.zcard(KEYS.state_index("stored")) == 0


def test_update_and_incr(store):
    job, _ = store.create(JobRequest("p"))
    assert store.update(job.id, expect=[S.QUEUED, S.SUBMITTING], fields={"account": "a", "x": 1.5})
    assert store.incr(job.id, "submit_attempts") == 1
    assert store.incr(job.id, "submit_attempts", 2) == 3
    got = store.get(job.id)
    assert got is not None
    assert (got.account, got.extra, got.submit_attempts, got.state) == ("a", {"x": "1.5"}, 3, S.QUEUED)
    with pytest.raises(LookupError):
        store.incr("missing", "submit_attempts")
    with pytest.raises(ValueError, match="written by the store"):
        store.update(job.id, expect=S.QUEUED, fields={"state": "stored"})


def test_only_one_of_20_racing_writers_wins(store):
    job, _ = store.create(JobRequest("p"))
    advance(store, job.id, S.SUBMITTING, S.GENERATING, task_id="t1")
    barrier = threading.Barrier(20)
    results: list[bool] = []

    def race(i: int) -> None:
        barrier.wait()
        results.append(store.transition(job.id, S.DOWNLOADING, expect=S.GENERATING, fields={"result_url": f"u{i}"}))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 19 + [True]
    assert store.count_by_state()[S.DOWNLOADING] == 1


def test_terminal_state_expires_record_and_keys_and_resubmit_persists(store, redis_client):
    job, _ = store.create(JobRequest("p", idempotency_key="idem"))
    advance(store, job.id, S.SUBMITTING, S.GENERATING, task_id="t1")
    assert redis_client.ttl(KEYS.job(job.id)) == -1 and redis_client.ttl(KEYS.idempotency("idem")) == -1
    assert 0 < redis_client.ttl(KEYS.task_index("t1")) <= 3600 + TASK_INDEX_SLACK_S

    assert store.transition(job.id, S.FAILED, fields={"reason": "timed_out", "error": "too slow"})
    assert 3590 < redis_client.ttl(KEYS.job(job.id)) <= 3600
    assert 3590 < redis_client.ttl(KEYS.idempotency("idem")) <= 3600
    failed = store.get(job.id)
    assert failed is not None and failed.terminal and failed.reason == "timed_out"

    assert store.transition(job.id, S.QUEUED, fields={"reason": None, "error": None, "task_id": None})
    assert redis_client.ttl(KEYS.job(job.id)) == -1 and redis_client.ttl(KEYS.idempotency("idem")) == -1
    back = store.get(job.id)
    assert back is not None and back.state is S.QUEUED and back.reason is None and back.task_id is None
    assert back.timestamps["failed"] > back.created_at and back.timestamps["queued"] >= back.timestamps["failed"]


def test_a_job_without_idempotency_key_expires_too(store, redis_client):
    job, _ = store.create(JobRequest("p"))
    assert store.transition(job.id, S.CANCELED, expect=S.QUEUED, pipe=None)
    assert 3590 < redis_client.ttl(KEYS.job(job.id)) <= 3600


def test_task_index_lookup(store):
    job, _ = store.create(JobRequest("p"))
    advance(store, job.id, S.SUBMITTING, S.GENERATING, task_id="task-9")
    found = store.by_task_id("task-9")
    assert found is not None and found.id == job.id and found.task_id == "task-9"
    assert store.by_task_id("unknown") is None


def test_writes_share_a_pipeline(store, redis_client):
    a, _ = store.create(JobRequest("a"))
    b, _ = store.create(JobRequest("b"))
    with redis_client.pipeline(transaction=False) as pipe:
        store.transition(a.id, S.SUBMITTING, expect=S.QUEUED, pipe=pipe)
        store.transition(b.id, S.GENERATING, expect=S.QUEUED, pipe=pipe)  # never allowed: still one result
        store.transition(b.id, S.CANCELED, expect=S.QUEUED, pipe=pipe)
        store.update(a.id, expect=S.QUEUED, fields={"x": "late"}, pipe=pipe)  # a is submitting by now
        assert pipe.execute() == [1, 0, 1, 0]
    assert [store.get(a.id).state, store.get(b.id).state] == [S.SUBMITTING, S.CANCELED]  # type: ignore[union-attr]


def test_count_by_state_and_ids_in_state(store, redis_client):
    jobs = [store.create(JobRequest(f"p{i}"))[0] for i in range(5)]
    for job in jobs[:2]:
        store.transition(job.id, S.SUBMITTING)
    counts = store.count_by_state()
    assert counts[S.QUEUED] == 3 and counts[S.SUBMITTING] == 2 and counts[S.STORED] == 0
    assert set(counts) == set(JobState)

    # Backdate one submitting entry by a minute: only it is "older than 30 s".
    stale = jobs[0].id
    score = redis_client.zscore(KEYS.state_index("submitting"), stale)
    redis_client.zadd(KEYS.state_index("submitting"), {stale: score - 60_000})
    assert store.ids_in_state(S.SUBMITTING, older_than_s=30) == [stale]
    assert store.ids_in_state(S.SUBMITTING) == [stale, jobs[1].id]
    queued = store.ids_in_state(S.QUEUED, limit=2)  # entries of the same ms order by id
    assert len(queued) == 2 and set(queued) < {job.id for job in jobs[2:]}


def test_cleanup_indexes_drops_entries_of_expired_jobs(redis_client):
    store = JobStore(redis_client, KEYS, terminal_ttl_s=1)
    done, _ = store.create(JobRequest("done"))
    live, _ = store.create(JobRequest("live"))
    assert store.transition(done.id, S.CANCELED)
    assert store.cleanup_indexes() == 0
    wait_for(lambda: not redis_client.exists(KEYS.job(done.id)))
    assert store.count_by_state()[S.CANCELED] == 1  # the index still names it
    assert store.cleanup_indexes() == 1
    assert store.count_by_state()[S.CANCELED] == 0
    assert store.ids_in_state(S.QUEUED) == [live.id]


def test_bytes_clients_work_too(redis_url):
    client = redis.Redis.from_url(redis_url)  # decode_responses=False
    try:
        store = JobStore(client, KEYS)
        job, created = store.create(JobRequest("p", idempotency_key="b"))
        assert created and store.create(JobRequest("p", idempotency_key="b")) == (job, False)
        assert store.transition(job.id, S.SUBMITTING)
        assert store.ids_in_state(S.SUBMITTING, older_than_s=0) == [job.id]
        assert store.get_many([job.id, "nope"])[0].state is S.SUBMITTING  # type: ignore[union-attr]
    finally:
        client.close()


def test_a_claim_reads_the_job_and_moves_it_out_of_the_ready_set_in_one_step(store, redis_client):
    keys = KEYS
    job, _ = store.create(JobRequest(prompt="claim me"))
    store.make_ready(job)
    assert redis_client.zscore(keys.ready(job.pool), job.id) is not None

    read, moved = store.claim(job.id, pool=job.pool, fields={"claim": "c1"}, acknowledge=False)

    # The record (read in the same round trip), and the move itself, out of the ready set and its entry
    assert moved is True and read is not None and (read.id, read.prompt) == (job.id, "claim me")
    now = store.get(job.id)
    assert now is not None and now.state is JobState.SUBMITTING and now.extra["claim"] == "c1" and now.attempts == 1
    assert redis_client.zscore(keys.ready(job.pool), job.id) is None
    assert redis_client.hget(keys.ready_meta(job.pool), job.id) is None
    # A job no longer queued is not claimed again; a missing one reads as None
    assert store.claim(job.id, pool=job.pool, fields={"claim": "c2"}, acknowledge=False)[1] is False
    assert store.get(job.id).extra["claim"] == "c1"
    assert store.claim("0" * 32, pool=job.pool, fields={"claim": "c3"}, acknowledge=False) == (None, False)
