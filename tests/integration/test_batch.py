"""Batches end to end with real workers: bad lines reported, good lines stored, manifest written, re-submit
spends nothing, the reconciler finalises a batch nobody waits for, and interactive jobs jump the backlog."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import requests

from core.jobs import JobState
from core.quota import QuotaLimiter
from devstack import services
from devstack.deployment import Deployment, deployment, must, wait_until
from workers.batch.reader import BatchSubmitter
from workers.batch.store import wait_until_finished
from workers.reconcile import Reconciler
from workers.runtime import Runtime

pytestmark = pytest.mark.integration

BAD = {
    7: "{broken",
    19: json.dumps({"prompt": "", "id": "empty"}),
    23: json.dumps({"prompt": "dup", "id": "line-3"}),
    31: json.dumps({"prompt": "x", "mode": "wild"}),
}


def write_batch(path: Path, lines: int = 50) -> None:
    rows = []
    for number in range(1, lines + 1):
        if number in BAD:
            rows.append(BAD[number])
        elif number % 2:
            rows.append(
                json.dumps(
                    {"id": f"line-{number}", "prompt": f"A lighthouse number {number}", "metadata": {"n": number}}
                )
            )
        else:
            rows.append(json.dumps({"prompt": f"A windmill number {number}", "aspect_ratio": "1:1"}))
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(tmp_path_factory.mktemp("batch"), workers={"submit": 2, "poll": 2, "store": 2}) as deployed:
        yield deployed


@pytest.fixture
def submitter(dep: Deployment) -> Iterator[BatchSubmitter]:
    made = BatchSubmitter(dep.settings)
    yield made
    made.close()


def test_a_50_line_batch_ends_with_a_correct_manifest_and_a_resubmit_creates_nothing(
    dep: Deployment, submitter: BatchSubmitter, tmp_path: Path
):
    source = tmp_path / "prompts.jsonl"
    write_batch(source)
    created_before = dep.stats()["created"]

    result = submitter.submit(str(source))

    assert result.read
    assert (result.status.lines, result.status.good, result.status.bad) == (50, 46, 4)
    assert {bad.line for bad in result.bad_lines} == set(BAD)
    assert "duplicate id 'line-3' (first on line 3)" in {bad.error for bad in result.bad_lines}
    *_, done = wait_until_finished(submitter.batches, result.status.id, submitter.files, interval_s=0.2, timeout_s=180)
    assert done.done and done.states == {"stored": 46}

    manifest = [json.loads(line) for line in (tmp_path / "prompts.results.jsonl").read_text().splitlines()]
    assert [row["line"] for row in manifest] == list(range(1, 51))
    for row in manifest:
        if row["line"] in BAD:
            assert row["state"] == "invalid" and row["job_id"] is None and row["error"]
        else:
            assert row["state"] == "stored" and row["s3_uri"].startswith("s3://") and row["error"] is None
            job = dep.producer.get(row["job_id"])
            assert job is not None and job.batch_id == result.status.id and job.priority.value == "batch"
    assert manifest[2]["id"] == "line-3" and manifest[1]["id"] is None
    assert dep.stats()["created"] == created_before + 46

    again = submitter.submit(str(source))
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(source.read_bytes())
    elsewhere = submitter.submit(str(copy))  # same content, same batch
    assert not again.read and not elsewhere.read
    assert again.status.id == elsewhere.status.id == result.status.id
    assert dep.stats()["created"] == created_before + 46


def test_an_s3_batch_nobody_waits_for_is_finished_when_its_last_job_ends(dep: Deployment, submitter: BatchSubmitter):
    bucket = dep.settings.s3.bucket
    lines = [json.dumps({"id": i, "prompt": f"A kite number {i}"}) for i in range(6)] + ["[1, 2]"]
    dep.s3.put_object(Bucket=bucket, Key="in/kites.jsonl", Body=("\n".join(lines) + "\n").encode())
    # One of its jobs is canceled before it reaches the upstream (the account paused meanwhile, with no
    # credits to show: a submitter's credits check would otherwise resume it at once).
    quota = QuotaLimiter.for_settings(dep.producer.redis, dep.producer.keys, dep.settings)
    dep.sim_config(credits=0)
    quota.pause("default", "the test holds the jobs")
    try:
        result = submitter.submit(f"s3://{bucket}/in/kites.jsonl", name="kites", priority="normal")
        assert result.status.id == "kites" and result.status.bad == 1
        pending = sorted(cast("set[str]", submitter.redis.smembers(submitter.keys.batch_pending("kites"))))
        canceled = dep.producer.cancel(pending[0], by="the test")
        assert canceled.state is JobState.CANCELED
    finally:
        dep.sim_config(credits=-1)
        quota.resume("default")
    # With no beat, no reconciler and nobody waiting, the batch is done once its last job ended.
    wait_until(lambda: must(submitter.batches.get("kites")).done, 120, "the batch's end")
    body = dep.s3.get_object(Bucket=bucket, Key="in/kites.results.jsonl")["Body"].read().decode()
    rows = [json.loads(line) for line in body.splitlines()]
    stored = 5
    assert sorted(row["state"] for row in rows) == sorted(
        ["stored"] * stored + ["canceled"] * (6 - stored) + ["invalid"]
    )
    assert [row["id"] for row in rows[:6]] == [str(i) for i in range(6)]
    status = must(submitter.batches.get("kites"))
    assert status.states.get("canceled", 0) == 6 - stored and status.states.get("failed", 0) == 0
    events = cast("list[tuple[str, dict[str, str]]]", dep.producer.redis.xrange(dep.producer.keys.events()))
    assert [f["type"] for _, f in events if f.get("batch") == "kites" and not f.get("job")] == ["batch.completed"]
    # The reconciler only repairs: a batch left unfinished (as a crash between its last job's end and its
    # manifest leaves it) is finished by it.
    submitter.redis.hset(submitter.keys.batch("kites"), "status", "submitted")
    submitter.redis.sadd(submitter.keys.batches_active(), "kites")
    reconciler = Reconciler(Runtime.build(dep.settings), dep.producer.app)
    assert reconciler.run().get("batch_finalised") == 1
    assert must(submitter.batches.get("kites")).done


def test_a_batch_with_no_good_line_is_done_at_once(dep: Deployment, submitter: BatchSubmitter, tmp_path: Path):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"prompt": 7}\n')
    result = submitter.submit(str(source))
    assert result.status.done and result.status.bad == 1 and result.status.good == 0
    rows = [json.loads(line) for line in (tmp_path / "bad.results.jsonl").read_text().splitlines()]
    assert [row["state"] for row in rows] == ["invalid"]


def queued_messages(dep: Deployment, priority: int) -> list[str]:
    """The job ids of the submit messages waiting in the broker at ``priority``."""
    raw = cast("list[str]", dep.producer.redis.lrange(dep.producer.keys.broker_queue("submit", priority), 0, -1))
    return [json.loads(base64.b64decode(json.loads(message)["body"]))[0][0] for message in raw]


def submit_backlog(dep: Deployment, source: Path, prompt: str, lines: int) -> list[str]:
    """A batch of ``lines`` prompts read into jobs; their ids."""
    source.write_text("".join(json.dumps({"prompt": f"{prompt} {i}"}) + "\n" for i in range(lines)))
    submitter = BatchSubmitter(dep.settings)
    try:
        backlog = submitter.submit(str(source))
        return list(cast("set[str]", submitter.redis.smembers(submitter.keys.batch_pending(backlog.status.id))))
    finally:
        submitter.close()


def test_an_interactive_job_goes_before_2000_waiting_batch_jobs(tmp_path: Path):
    with deployment(tmp_path / "services", workers={"poll": 1, "store": 1}) as dep:
        batch_jobs = submit_backlog(dep, tmp_path / "backlog.jsonl", "Backlog scene", 2000)
        assert len(batch_jobs) == 2000
        interactive = dep.producer.enqueue("Someone is waiting for this one")

        dep.start_worker("submit", concurrency=1)  # the submit queue had no consumer until now

        wait_until(lambda: dep.producer.get(interactive.id).state is not JobState.QUEUED, 60, "a submit")
        first = dep.producer.get(interactive.id).timestamps["submitting"]
        with dep.producer.redis.pipeline(transaction=False) as pipe:
            for job_id in batch_jobs:
                pipe.hget(dep.producer.keys.job(job_id), "at_submitting")
            batch_starts = [float(at) for at in pipe.execute() if at is not None]
        assert all(at > first for at in batch_starts), "a batch job was submitted before the interactive one"


def test_the_batch_commands_as_an_operator_runs_them(dep: Deployment, tmp_path: Path):
    source = tmp_path / "cli.jsonl"
    write_batch(source, lines=10)  # lines 7 is broken: 9 good, 1 bad

    submitted = dep.cli("batch", "submit", str(source), "--name", "cli-batch", "--wait", "--json")
    # Every good line stored, the bad one reported: done as asked (producers.exit_codes).
    assert submitted.returncode == 0, submitted.stderr
    outcome = json.loads(submitted.stdout)
    assert (outcome["id"], outcome["lines"], outcome["good"], outcome["bad"]) == ("cli-batch", 10, 9, 1)

    status = dep.cli("batch", "status", "cli-batch", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["status"] == "done" and shown["states"] == {"stored": 9}
    assert shown["manifest"].endswith("cli.results.jsonl")

    listed = dep.cli("batch", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "cli-batch" in [row["id"] for row in json.loads(listed.stdout)]
    # As a table, not on a terminal: whole ids.
    table = dep.cli("batch", "list")
    assert table.returncode == 0 and "cli-batch" in table.stdout

    missing = dep.cli("batch", "status", "no-such-batch")
    assert missing.returncode == 1 and "no-such-batch" in missing.stderr

    # A file with no good line is unusable input: 2. A good line that ends failed is a failure: 1.
    useless = tmp_path / "useless.jsonl"
    useless.write_text('{"prompt": 7}\n')
    assert dep.cli("batch", "submit", str(useless), "--wait").returncode == 2
    failing = tmp_path / "failing.jsonl"
    failing.write_text(json.dumps({"prompt": "a forbidden line"}) + "\n" + json.dumps({"prompt": "a fine one"}) + "\n")
    assert dep.cli("batch", "submit", str(failing), "--wait").returncode == 1


def test_an_interactive_job_overtakes_the_batch_while_submitters_wait_for_quota(tmp_path: Path):
    """Every slot busy and both submitters waiting for one: the interactive job enqueued now is the next
    one created, before every batch job still queued (submitters take the first job by rank, from the
    ready sets, only once a slot is free for it)."""
    accounts = [{"name": "default", "api_key": "sim-key", "base_url": "{simulator}", "max_in_progress": 2}]
    with deployment(
        tmp_path / "services",
        simulator_args=("--gen-time", "1.5:2.0", "--video-bytes", "65536"),
        # The per-worker rate limit derived for 2 slots (12/min) would space the submits out: off here.
        env={
            "IMAGINEQ_ACCOUNTS": json.dumps(accounts),
            "IMAGINEQ_QUOTA_WAIT_MAX_S": "5",
            "IMAGINEQ_SUBMIT_RATE_LIMIT": "0/s",
        },
        workers={"submit": 2, "poll": 1, "store": 1},
    ) as dep:
        batch_jobs = submit_backlog(dep, tmp_path / "busy.jsonl", "Queued scene", 12)

        def states() -> list[JobState]:
            return [job.state for job in dep.producer.jobs.get_many(batch_jobs) if job is not None]

        # Both slots generating, the rest queued.
        wait_until(
            lambda: states().count(JobState.GENERATING) == 2 and states().count(JobState.QUEUED) == 10,
            60,
            "the slots to fill",
        )
        interactive = dep.producer.enqueue("Someone is waiting for this one")
        still_queued = [
            job.id for job in dep.producer.jobs.get_many(batch_jobs) if job and job.state is JobState.QUEUED
        ]

        done = dep.producer.wait(interactive.id, timeout=120)
        assert done.state is JobState.STORED
        created_at = done.timestamps["generating"]
        later = dep.producer.jobs.get_many(still_queued)
        overtaken = [job.id for job in later if job is not None and job.timestamps.get("generating", 1e18) < created_at]
        assert overtaken == [], "batch jobs queued behind it were created first"
        assert len(still_queued) >= 8


def test_an_operator_submits_follows_and_reads_a_batch_over_http(dep: Deployment) -> None:
    admin, tenant = "batch-admin-token-0123456789abcdef", "batch-tenant-token-0123456789abcdef"
    principals = [{"name": "ops", "token": admin, "admin": True}, {"name": "acme", "token": tenant}]
    web = services.start_web(dep.stack, {**dep.env, "IMAGINEQ_INGRESS_PRINCIPALS": json.dumps(principals)})
    auth = {"Authorization": f"Bearer {admin}"}
    body = "".join(json.dumps({"id": f"k{i}", "prompt": f"A kite over the sea {i}"}) + "\n" for i in range(3))
    body += "not json\n"
    answer = requests.post(f"{web.url}/v1/batches", params={"priority": "normal"}, data=body, headers=auth, timeout=60)
    assert answer.status_code == 201, answer.text
    made = answer.json()
    assert (made["lines"], made["good"], made["bad"]) == (4, 3, 1) and made["bad_lines"][0]["line"] == 4
    # The same body again is the same batch: nothing new.
    again = requests.post(f"{web.url}/v1/batches", params={"priority": "normal"}, data=body, headers=auth, timeout=60)
    assert again.status_code == 200 and again.json()["id"] == made["id"]
    # Its progress by a prefix of its id, then its manifest once done.
    prefix = made["id"][:8]
    wait_until(
        lambda: requests.get(f"{web.url}/v1/batches/{prefix}", headers=auth, timeout=30).json()["status"] == "done",
        120,
        "the batch over HTTP",
    )
    manifest = requests.get(f"{web.url}/v1/batches/{prefix}/manifest", headers=auth, timeout=30)
    rows = [json.loads(line) for line in manifest.text.splitlines()]
    assert [row["state"] for row in rows] == ["stored"] * 3 + ["invalid"]
    listed = requests.get(f"{web.url}/v1/batches", headers=auth, timeout=30).json()["batches"]
    assert made["id"] in [row["id"] for row in listed]
    # The CLI takes the prefix too; a tenant's token is refused: batches are the operator's.
    assert dep.cli("batch", "status", prefix).returncode == 0
    tenant_auth = {"Authorization": f"Bearer {tenant}"}
    assert requests.get(f"{web.url}/v1/batches", headers=tenant_auth, timeout=30).status_code == 403
    assert requests.post(f"{web.url}/v1/batches", data=body, headers=tenant_auth, timeout=30).status_code == 403
