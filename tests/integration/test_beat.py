"""Beat with celery-redbeat: two real ``celery beat`` processes, only the lock holder schedules; the
nightly inbox pickup submits each file once and moves it to the processed location."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from config.celery import broker_prefix
from config.settings import Settings, load_settings
from core.jobs import JobState
from devstack import services
from devstack.deployment import deployment, wait_until
from devstack.imagineq import start_beat
from devstack.services import LocalStack, Service
from tests.conftest import S3_TEST_CREDENTIALS, s3_client_for
from workers.batch.inbox import run_inbox
from workers.batch.reader import BatchSubmitter

pytestmark = pytest.mark.integration

SENT = "Sending due task imagineq-reconcile"


def sends(service: Service) -> int:
    path = service.log_path
    return path.read_text(errors="replace").count(SENT) if path is not None and path.exists() else 0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    with services.terminate_on_signals(), LocalStack(tmp_path) as started:
        yield started


def test_two_beats_only_the_lock_holder_schedules_and_the_other_takes_over(stack: LocalStack):
    redis_url = stack.redis()
    env = {
        "IMAGINEQ_REDIS_URL": redis_url,
        "IMAGINEQ_REDIS_PREFIX": "beat",
        "IMAGINEQ_RECONCILE_INTERVAL_S": "1",
        "IMAGINEQ_BEAT_LOCK_TIMEOUT_S": "3",
    }
    first = start_beat(stack, env, "beat-1")
    wait_until(lambda: sends(first) >= 1, 60, "the first beat to schedule")
    second = start_beat(stack, env, "beat-2")
    wait_until(
        lambda: "beat: Starting" in second.log_tail(100_000) and sends(first) >= 6, 60, "both beats to run a while"
    )

    assert sends(second) == 0, second.log_tail()
    client = redis.Redis.from_url(redis_url)
    poll = f"{broker_prefix(load_settings(redis_prefix='beat'))}poll"
    first.kill()  # stops it sending (the log line comes just before its publish): the counts settle
    # Every message came from the one beat that held the lock.
    wait_until(lambda: client.llen(poll) == sends(first), 10, "the queue to hold exactly the first beat's sends")

    wait_until(lambda: sends(second) >= 2, 30, "the second beat to take over")
    assert "beat: Acquired lock" in second.log_tail(100_000)


def test_beat_rides_out_a_redis_restart(stack: LocalStack):
    """The lock's renewal fails while Redis is down: beat skips those ticks and schedules again once it is
    back (redbeat alone would exit)."""
    port = services.free_port()
    server = stack.add(services.start_redis(stack.log_dir, port=port, appendonly=True))
    env = {
        "IMAGINEQ_REDIS_URL": server.url,
        "IMAGINEQ_REDIS_PREFIX": "beat",
        "IMAGINEQ_RECONCILE_INTERVAL_S": "1",
        "IMAGINEQ_BEAT_LOCK_TIMEOUT_S": "3",
    }
    scheduler = start_beat(stack, env, "beat-restart")
    wait_until(lambda: sends(scheduler) >= 2, 60, "beat to schedule")
    server.stop()
    wait_until(lambda: "Redis unreachable" in scheduler.log_tail(100_000), 30, "beat to notice Redis is gone")
    down = sends(scheduler)
    stack.add(services.start_redis(stack.log_dir, port=port, appendonly=True))
    wait_until(lambda: sends(scheduler) >= down + 2, 60, "beat to schedule again")
    assert scheduler.alive(), scheduler.log_tail()


# -- the nightly inbox ------------------------------------------------------------------------------------


def lines(prefix: str, n: int) -> str:
    return "".join(json.dumps({"id": f"{prefix}-{i}", "prompt": f"{prefix} scene {i}"}) + "\n" for i in range(n))


def test_the_inbox_is_submitted_once_and_moved_to_processed(stack: LocalStack, tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "monday.jsonl").write_text(lines("monday", 3))
    (inbox / "tuesday.jsonl").write_text(lines("tuesday", 2) + "not json\n")
    (inbox / "old.results.jsonl").write_text("{}\n")
    (inbox / "notes.txt").write_text("not a batch")
    settings = load_settings(redis_url=stack.redis(), inbox=str(inbox))

    picked = run_inbox(settings)

    assert [Path(item.source).name for item in picked] == ["monday.jsonl", "tuesday.jsonl"]
    assert [(item.lines, item.bad, item.created) for item in picked] == [(3, 0, 3), (3, 1, 2)]
    assert sorted(p.name for p in inbox.iterdir()) == ["notes.txt", "old.results.jsonl", "processed"]
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == ["monday.jsonl", "tuesday.jsonl"]
    submitter = BatchSubmitter(settings)
    try:
        status = submitter.batches.get(picked[0].batch_id)
        assert status is not None and status.results == str(inbox / "processed" / "monday.results.jsonl")
        assert run_inbox(settings) == []  # nothing new

        (inbox / "monday.jsonl").write_text(lines("monday", 3))  # dropped again: same content, same batch
        again = run_inbox(settings, submitter)
    finally:
        submitter.close()
    assert [(item.batch_id, item.read, item.created) for item in again] == [(picked[0].batch_id, False, 3)]
    assert Path(again[0].moved_to).name.startswith("monday-")


def test_an_s3_inbox_is_moved_under_the_processed_prefix(stack: LocalStack, s3_endpoint: str, s3_bucket: str):
    s3 = s3_client_for(s3_endpoint)
    s3.put_object(Bucket=s3_bucket, Key="inbox/wednesday.jsonl", Body=lines("wednesday", 4).encode())
    s3.put_object(Bucket=s3_bucket, Key="inbox/deeper/skip.jsonl", Body=b"{}\n")
    settings: Settings = load_settings(
        redis_url=stack.redis(),
        inbox=f"s3://{s3_bucket}/inbox/",
        processed=f"s3://{s3_bucket}/done/",
        s3={
            "endpoint_url": s3_endpoint,
            "bucket": s3_bucket,
            "access_key_id": S3_TEST_CREDENTIALS["aws_access_key_id"],
            "secret_access_key": S3_TEST_CREDENTIALS["aws_secret_access_key"],
        },
    )

    picked = run_inbox(settings)

    assert [(item.moved_to, item.lines) for item in picked] == [(f"s3://{s3_bucket}/done/wednesday.jsonl", 4)]
    keys = sorted(item["Key"] for item in s3.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert keys == ["done/wednesday.jsonl", "inbox/deeper/skip.jsonl"]
    assert run_inbox(settings) == []


def test_a_deeply_nested_line_is_one_bad_line_and_the_inbox_goes_on(stack: LocalStack, tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    deep = '{"prompt": "x", "metadata": ' + "[" * 5000 + "]" * 5000 + "}\n"
    (inbox / "a-poisoned.jsonl").write_text(lines("a", 1) + deep + lines("a2", 1))
    (inbox / "b-fine.jsonl").write_text(lines("b", 2))
    settings = load_settings(redis_url=stack.redis(), inbox=str(inbox))

    picked = run_inbox(settings)

    assert [(Path(item.source).name, item.lines, item.bad, item.error) for item in picked] == [
        ("a-poisoned.jsonl", 3, 1, None),
        ("b-fine.jsonl", 2, 0, None),
    ]
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == ["a-poisoned.jsonl", "b-fine.jsonl"]


class _BreaksOn(BatchSubmitter):
    """A submitter that fails in a way nothing foresaw for one file (a bug, a library's surprise)."""

    def submit(self, source: str, **options: Any) -> Any:
        if source.endswith("poison.jsonl"):
            raise RuntimeError("the reader met something it could not handle")
        return super().submit(source, **options)


def test_a_file_that_cannot_be_read_is_moved_aside_and_the_others_proceed(stack: LocalStack, tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a-poison.jsonl").write_text(lines("p", 2))
    (inbox / "b-fine.jsonl").write_text(lines("b", 2))
    settings = load_settings(redis_url=stack.redis(), inbox=str(inbox))
    submitter = _BreaksOn(settings)
    try:
        picked = run_inbox(settings, submitter)
        assert run_inbox(settings, submitter) == []  # the poison file does not fail again tomorrow
    finally:
        submitter.close()

    [poison, fine] = picked
    assert poison.error is not None and "could not handle" in poison.error
    assert poison.moved_to == str(inbox / "failed" / "a-poison.jsonl")
    assert (fine.error, fine.lines) == (None, 2)
    assert sorted(p.name for p in (inbox / "failed").iterdir()) == ["a-poison.jsonl"]
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == ["b-fine.jsonl"]


def test_the_nightly_cron_fires_through_beat_into_the_inbox_task(tmp_path: Path):
    """The whole path: beat's schedule (a cron every minute here) sends the inbox task, a poll worker runs
    it, the file is read into jobs that are stored, and the file is moved to processed/."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "tonight.jsonl").write_text(lines("tonight", 3))
    env = {"IMAGINEQ_INBOX": str(inbox), "IMAGINEQ_NIGHTLY_CRON": "* * * * *"}
    with deployment(tmp_path / "services", env=env, workers={"submit": 1, "poll": 1, "store": 1}) as dep:
        scheduler = start_beat(dep.stack, dep.env, "beat-nightly")
        moved = inbox / "processed" / "tonight.jsonl"
        wait_until(moved.exists, 90, "beat's nightly run to pick the file up")
        assert "Sending due task imagineq-nightly-inbox" in scheduler.log_tail(100_000)
        wait_until(
            lambda: dep.producer.jobs.count_by_state().get(JobState.STORED, 0) == 3, 90, "the inbox's jobs to be stored"
        )
        submitter = BatchSubmitter(dep.settings)
        try:
            [batch] = submitter.batches.recent(10)
        finally:
            submitter.close()
        assert (batch.lines, batch.created) == (3, 3)
