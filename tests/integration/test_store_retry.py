"""S3 refusing writes for longer than a store's own retries: the job fails (transfer), and is stored later.

Real processes throughout: one store worker with a single pool process, the S3 server, the simulator.
The bucket is deleted under the running worker, so every upload is refused (NoSuchBucket) until it is
back; the store's six attempts (backoff 2 + 4 + 8 + 16 + 30 s) then end the job ``failed (transfer)``.
The result URL lives on for 24 h, so the reconciler stores it again once S3 takes writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.jobs import JobState
from devstack.deployment import Deployment, deployment, must, wait_until
from workers.reconcile import Reconciler
from workers.runtime import Runtime

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

BUCKET = "imagineq-store-retry"


@pytest.fixture
def dep(tmp_path: Path) -> Iterator[Deployment]:
    with deployment(tmp_path / "services", workers={"submit": 1, "poll": 1, "store": 1}, bucket=BUCKET) as deployed:
        yield deployed


def empty_and_delete_bucket(dep: Deployment) -> None:
    listed = dep.s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    for item in listed:
        dep.s3.delete_object(Bucket=BUCKET, Key=item["Key"])
    dep.s3.delete_bucket(Bucket=BUCKET)


def test_a_store_that_s3_refused_is_stored_again_once_s3_takes_writes(dep: Deployment) -> None:
    warm = dep.producer.wait(dep.producer.enqueue("Warm the store worker up").id, timeout=60)
    assert warm.state is JobState.STORED  # its only pool process has built its clients (and the bucket)

    empty_and_delete_bucket(dep)
    job = dep.producer.wait(dep.producer.enqueue("S3 says no").id, timeout=150)
    assert (job.state, job.reason) == (JobState.FAILED, "transfer"), job.error
    assert job.store_attempts == 6 and "NoSuchBucket" in (job.error or "")

    # Nothing retries it by itself while S3 refuses: the reconciler's case does, and only once S3 is back.
    dep.s3.create_bucket(Bucket=BUCKET)
    settings = dep.settings.model_copy(update={"reconcile_salvage_interval_s": 0.0})
    runtime = Runtime.build(settings)
    try:
        counts = Reconciler(runtime, dep.producer.app).run()
    finally:
        runtime.close()
    assert counts.get("store_retried") == 1
    wait_until(lambda: must(dep.producer.get(job.id)).state is JobState.STORED, 60, "the second store")
    stored = must(dep.producer.get(job.id))
    assert stored.sha256 == dep.expected_sha256(must(stored.task_id))
    assert "store_retried_at" in stored.extra and stored.reason is None
