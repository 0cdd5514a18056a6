"""The whole pipeline with real worker processes: enqueue → submit → poll → store in S3."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from typing import cast

import av
import pytest

from core.balances import Balances
from core.jobs import JobRequest, JobState
from devstack.deployment import Deployment, deployment, must, wait_until

pytestmark = pytest.mark.integration

DEFAULTS = {
    "force_status": [],
    "delay_s": 0,
    "url_ttl_s": 86400,
    "credits": -1,
    "maintenance": False,
    "fail_rate": 0.0,
    "file_rate_bytes_per_s": 0,
    "video_bytes": 262144,
}


@pytest.fixture(scope="module")
def module_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(
        tmp_path_factory.mktemp("pipeline"),
        env={"IMAGINEQ_HTTP__READ_TIMEOUT_S": "2"},
    ) as deployed:
        yield deployed


@pytest.fixture
def dep(module_deployment: Deployment) -> Iterator[Deployment]:
    yield module_deployment
    module_deployment.sim_config(**DEFAULTS)


@pytest.mark.parametrize(("aspect_ratio", "mode"), [("2:3", "normal"), ("3:2", "spicy"), ("1:1", "fun")])
def test_a_stored_video_is_a_playable_h264_clip_of_the_requested_aspect_ratio(
    dep: Deployment, aspect_ratio: str, mode: str
):
    dep.sim_config(video_bytes=0)  # the simulator's default: real clips
    job = dep.producer.enqueue("A lighthouse at dusk, waves rolling in", aspect_ratio=aspect_ratio, mode=mode)

    (done,) = dep.wait_all([job])

    assert done.state is JobState.STORED, (done.state, done.reason, done.error)
    bucket, key = must(done.s3_uri).removeprefix("s3://").split("/", 1)
    body = dep.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == done.sha256 == dep.expected_sha256(must(done.task_id))
    with av.open(io.BytesIO(body), "r") as container:
        (stream,) = container.streams.video
        assert container.format.name.startswith("mov,mp4")
        assert stream.codec_context.name == "h264"
        width, height = (int(side) for side in aspect_ratio.split(":"))
        assert stream.width * height == stream.height * width
        frames = len(list(container.decode(stream)))
    assert frames >= 48  # at least two seconds at 24 fps


def test_jobs_are_stored_with_the_bytes_the_upstream_served(dep: Deployment):
    prompts = [f"A paper boat number {i} drifts down a stream" for i in range(8)]
    jobs = dep.producer.enqueue_many([{"prompt": p, "aspect_ratio": "3:2"} for p in prompts])

    done = dep.wait_all(jobs)

    for job in done:
        assert job.state is JobState.STORED, (job.state, job.reason, job.error)
        assert job.sha256 == dep.expected_sha256(must(job.task_id))
        assert job.size == 262144
        bucket, key = must(job.s3_uri).removeprefix("s3://").split("/", 1)
        head = dep.s3.head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == "video/mp4"
        assert head["ContentLength"] == 262144
        assert head["Metadata"]["job-id"] == job.id
        body = dep.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == job.sha256
        sidecar = json.loads(dep.s3.get_object(Bucket=bucket, Key=key.removesuffix(".mp4") + ".json")["Body"].read())
        assert sidecar["id"] == job.id and sidecar["sha256"] == job.sha256
        assert set(job.timestamps) >= {"submitting", "generating", "downloading", "stored"}


def test_moderated_prompt_fails_with_the_upstream_reason(dep: Deployment):
    job = dep.producer.enqueue("forbidden scene the moderation refuses")
    job = dep.producer.wait(job.id, timeout=60)
    assert job.state is JobState.FAILED
    assert job.reason == "generation_failed"
    assert job.fail_code and "forbidden" in (job.fail_msg or "")


def test_a_422_from_the_upstream_rejects_the_job_at_once(dep: Deployment):
    dep.sim_config(force_status={"code": 422, "count": 1, "endpoint": "createTask", "msg": "input.prompt: bad"})
    job = dep.producer.wait(dep.producer.enqueue("A rejected prompt").id, timeout=60)
    assert job.state is JobState.FAILED
    assert job.reason == "rejected"
    assert "input.prompt" in (job.error or "")


def test_two_server_errors_then_success_is_stored(dep: Deployment):
    dep.sim_config(force_status={"code": 500, "count": 2, "endpoint": "createTask"})
    job = dep.producer.wait(dep.producer.enqueue("Twice unlucky, then fine").id, timeout=90)
    assert job.state is JobState.STORED, (job.reason, job.error)
    assert job.submit_attempts == 2


def test_a_create_task_read_timeout_is_an_unknown_outcome_never_resubmitted_blindly(dep: Deployment):
    created_before = dep.stats()["created"]
    dep.sim_config(delay_s=3.5)  # read timeout is 2 s in this deployment
    job = dep.producer.wait(dep.producer.enqueue("Slow upstream").id, timeout=60)
    dep.sim_config(delay_s=0)
    assert job.state is JobState.FAILED
    assert job.reason == "outcome_unknown"
    assert "imagineq resubmit" in (job.error or "")
    # The upstream did create the task; nothing created it a second time.
    wait_until(lambda: dep.stats()["created"] == created_before + 1, 10, "the delayed creation")
    time.sleep(1.0)  # no second creation may follow: give a wrong resubmit the chance to show
    assert dep.stats()["created"] == created_before + 1


def test_resubmitting_an_unknown_outcome_logs_a_creation_of_its_own(dep: Deployment):
    """An operator retries a job whose createTask answer was lost. Its first task may still run upstream:
    that slot stays taken, and the retry takes (and logs) a slot and a creation of its own, so the
    rolling window counts exactly what the upstream counts."""
    created_before = dep.stats()["created"]
    dep.sim_config(delay_s=3.5)
    job = dep.producer.wait(dep.producer.enqueue("Lost answer, then retried").id, timeout=60)
    dep.sim_config(delay_s=0)
    assert (job.state, job.reason) == (JobState.FAILED, "outcome_unknown")
    keys, redis_client = dep.producer.keys, dep.producer.redis

    def logged() -> int:  # our creation log's entries for this job
        entries = cast("list[str]", redis_client.zrange(keys.creations("default"), 0, -1))
        return sum(1 for entry in entries if entry.startswith(f"{job.id}:"))

    wait_until(lambda: dep.stats()["created"] == created_before + 1, 10, "the first task")
    seen_tasks = {task["taskId"] for task in dep.sim("tasks")["tasks"]}
    assert logged() == 1

    shown = dep.cli("job", job.id)
    assert shown.returncode == 0 and "outcome_unknown" in shown.stdout, shown.stderr
    resubmitted = dep.cli("resubmit", job.id)
    assert resubmitted.returncode == 0, resubmitted.stderr
    assert f"job {job.id} queued again (was failed: outcome_unknown)" in resubmitted.stdout

    done = dep.producer.wait(job.id, timeout=60)
    assert done.state is JobState.STORED, (done.state, done.error)
    new_tasks = {task["taskId"] for task in dep.sim("tasks")["tasks"]} - seen_tasks
    assert done.task_id in new_tasks
    assert dep.stats()["created"] == created_before + 2
    assert logged() == 2  # one creation logged per createTask the upstream received
    leases = cast("list[str]", redis_client.zrange(keys.leases("default"), 0, -1))
    assert [lease for lease in leases if job.id in lease] == [
        lease for lease in leases if lease.startswith(f"held:{job.id}:")
    ]
    assert len([lease for lease in leases if job.id in lease]) == 1  # the first task's slot, until its grace ends


def test_no_credits_pauses_the_account_until_credits_return(dep: Deployment):
    dep.sim_config(credits=0)
    job = dep.producer.enqueue("Waits for credits")
    wait_until(lambda: dep.stats()["errors_by_code"].get("402", 0) >= 1, 30, "a 402")
    # Held back: queued, or claimed by a submit that waits in-process for the account to resume.
    assert must(dep.producer.get(job.id)).state in (JobState.QUEUED, JobState.SUBMITTING)
    assert dep.producer.redis.get(dep.producer.keys.pause("default")) is not None  # the account is paused
    dep.sim_config(credits=100)
    job = dep.producer.wait(job.id, timeout=60)
    assert job.state is JobState.STORED, (job.reason, job.error)
    assert job.submit_attempts == 0  # a pause never consumes the job's retries


def test_a_stale_balance_reading_holds_no_job_back_without_beat(dep: Deployment):
    # A reading says the account cannot pay (as one taken during an outage would), and no beat runs here to
    # read it again: the submitter that meets it reads the balance itself (the simulator's is unlimited).
    Balances(dep.producer.redis, dep.producer.keys).record("default", 1.0, spent_before=0, low_below=0)
    job = dep.producer.wait(dep.producer.enqueue("Not held back by an old reading").id, timeout=60)
    assert job.state is JobState.STORED, (job.reason, job.error)
    assert Balances(dep.producer.redis, dep.producer.keys).read(["default"])[0].credits == 10**9


def test_an_expired_result_url_is_refreshed_and_stored(dep: Deployment):
    dep.sim_config(url_ttl_s=0.001)
    downloads_before = dep.stats()["download_urls_issued"]
    job = dep.producer.wait(dep.producer.enqueue("Expired link").id, timeout=60)
    assert job.state is JobState.STORED, (job.reason, job.error)
    assert dep.stats()["download_urls_issued"] == downloads_before + 1


def test_a_result_that_is_really_gone_ends_expired(dep: Deployment):
    dep.sim_config(url_ttl_s=0.001, force_status={"code": 404, "count": -1, "endpoint": "download-url"})
    job = dep.producer.wait(dep.producer.enqueue("Gone for good").id, timeout=60)
    assert job.state is JobState.EXPIRED, (job.reason, job.error)


def test_the_same_idempotency_key_creates_one_upstream_task(dep: Deployment):
    created_before = dep.stats()["created"]
    first = dep.producer.enqueue("Once only", idempotency_key="order-42")
    second = dep.producer.enqueue("Once only", idempotency_key="order-42")
    assert first.id == second.id
    job = dep.producer.wait(first.id, timeout=60)
    assert job.state is JobState.STORED
    assert dep.producer.enqueue("Once only", idempotency_key="order-42").id == first.id
    assert dep.stats()["created"] == created_before + 1


def test_a_store_worker_killed_mid_download_still_stores_once(dep: Deployment):
    # Versioned, so a second write of the same key would show as a second version.
    dep.s3.put_bucket_versioning(Bucket="imagineq-test", VersioningConfiguration={"Status": "Enabled"})
    # A slow 4 MB download gives time to SIGKILL the pool process that runs it.
    size = 4 * 1024 * 1024
    dep.sim_config(video_bytes=size, file_rate_bytes_per_s=1024 * 1024)
    before = dep.stats()
    job = dep.producer.enqueue("Survives a crash")
    claim = dep.producer.keys.store_claim(job.id)
    wait_until(lambda: dep.producer.redis.exists(claim) == 1, 60, "the store to start")
    wait_until(lambda: dep.stats()["bytes_served"] - before["bytes_served"] > 256 * 1024, 30, "the download to run")
    # SIGKILL the pool processes of the store worker (one of them is mid-download).
    for pid in _pool_children(dep.workers["store"][0].process.pid):
        _kill(pid)
    at_kill = dep.stats()
    assert at_kill["downloads"] - before["downloads"] == 1
    assert at_kill["bytes_served"] - before["bytes_served"] < size  # the kill hit the running transfer
    dep.sim_config(file_rate_bytes_per_s=0)
    job = dep.producer.wait(job.id, timeout=120)
    assert job.state is JobState.STORED, (job.reason, job.error)
    assert job.timestamps["stored"] >= job.timestamps["downloading"]
    assert dep.stats()["downloads"] - before["downloads"] == 2  # the interrupted one, and the one stored
    bucket, key = must(job.s3_uri).removeprefix("s3://").split("/", 1)
    versions = dep.s3.list_object_versions(Bucket=bucket, Prefix=key.removesuffix(".mp4"))
    written = sorted(version["Key"] for version in versions.get("Versions", []))
    assert written == sorted([key, key.removesuffix(".mp4") + ".json"])  # one write of each, ever
    assert dep.s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == size


def _pool_children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(child) for child in handle.read().split()]


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_cli_submit_wait_shows_the_id_at_once_then_each_state_and_job_takes_a_prefix(dep: Deployment):
    submitted = dep.cli("submit", "A lighthouse at dusk", "--wait", "--timeout", "60")
    assert submitted.returncode == 0, submitted.stderr
    lines = submitted.stdout.splitlines()
    # The id and state at once, with what the job is estimated to cost (6 s at 480p: 14.4 credits).
    assert lines[0].startswith("job ") and lines[0].endswith(" queued (estimate 14.4 credits)"), lines[0]
    job_id = lines[0].split()[1]
    progress = [re.fullmatch(r"\s*\d+\.\ds  (\w+)", line) for line in lines[1:]]
    states = [match[1] for match in progress if match]
    assert states[-1] == "stored" and "generating" in states, submitted.stdout  # a line per state change
    shown = dep.cli("job", job_id[:12])  # the 12 characters the demo shows
    assert shown.returncode == 0 and f"job          {job_id}" in shown.stdout, shown.stderr
    too_short = dep.cli("job", job_id[:7])
    assert too_short.returncode == 1
    assert "unique prefix of 8+ characters" in too_short.stderr


def test_cli_lists_cancels_and_fetches_jobs(dep: Deployment, tmp_path):
    stored = dep.producer.wait(dep.producer.enqueue("A kite over the dunes").id, timeout=60)
    assert stored.state is JobState.STORED
    waiting, _ = dep.producer.jobs.create(JobRequest("Never sent"))  # a queued record nobody submits

    listed = dep.cli("jobs", "--state", "stored", "--json")
    assert listed.returncode == 0, listed.stderr
    assert stored.id in [job["id"] for job in json.loads(listed.stdout)]
    table = dep.cli("jobs", "--limit", "200")
    assert stored.id in table.stdout and waiting.id in table.stdout  # whole ids, not cut in a pipe

    assert dep.cli("cancel", waiting.id[:10]).stdout.strip() == f"job {waiting.id} canceled"
    assert must(dep.producer.get(waiting.id)).state is JobState.CANCELED
    refused = dep.cli("cancel", stored.id)
    assert refused.returncode == 1 and f"job {stored.id} is already stored" in refused.stderr

    fetched = dep.cli("fetch", stored.id, str(tmp_path))
    assert fetched.returncode == 0, fetched.stderr
    video = tmp_path / f"{stored.id}.mp4"
    assert hashlib.sha256(video.read_bytes()).hexdigest() == stored.sha256
    assert not list(tmp_path.glob("*.part"))
    not_stored = dep.cli("fetch", waiting.id, str(tmp_path / "x.mp4"))
    assert not_stored.returncode == 1 and "only a stored job has outputs" in not_stored.stderr
    assert not (tmp_path / "x.mp4").exists()

    with socket.socket() as probe:  # a loopback port nothing listens on (reserved, then closed)
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    unreachable = dep.cli("fetch", stored.id, str(tmp_path / "y.mp4"), env={"IMAGINEQ_S3__ENDPOINT_URL": closed})
    assert unreachable.returncode == 2
    assert unreachable.stderr.startswith(f"error: S3 at {closed} (IMAGINEQ_S3__*): ")
    assert unreachable.stderr.count("\n") == 1 and not (tmp_path / "y.mp4").exists()
