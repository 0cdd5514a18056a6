"""The ``store`` step: stream the result into S3, once, whoever else tries at the same time."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from celery import Task

from config.celery import TASK_STORE, TIME_LIMITS
from core import tracing
from core.errors import (
    NotFound,
    UpstreamError,
)
from core.jobs import Job, JobState, encode_json
from workers.celery import app
from workers.runtime import Runtime
from workers.schedule import backoff_s
from workers.storage import ResultGone, StorageError
from workers.tasks.process import runtime
from workers.tasks.steps import MAX_TRANSIENT_ATTEMPTS, fail_job, requeue
from workers.tasks.store_claim import store_claim

log = logging.getLogger("imagineq.tasks")


@app.task(name=TASK_STORE, bind=True, max_retries=None, **TIME_LIMITS[TASK_STORE].options())
def store(self: Task, job_id: str) -> str | None:
    """Stream the result into S3; idempotent (an existing object is not re-uploaded)."""
    rt = runtime()
    job = rt.jobs.get(job_id)
    if job is None or job.state is not JobState.DOWNLOADING:
        return None
    with store_claim(rt, job_id) as claimed:
        if not claimed:
            # Another store runs (or died < STORE_CLAIM_TTL_S ago), or no replica holds this claim: look
            # again once the claim lapses.
            remaining_ms = int(rt.redis.pttl(rt.keys.store_claim(job_id)))  # type: ignore[arg-type]
            requeue(self, countdown=max(remaining_ms, 0) / 1000 + 0.5)
        urls = job.result_urls or ([job.result_url] if job.result_url else [])
        assert urls, f"job {job_id} is downloading without a result URL"
        account = job.account
        refresh = _refresher(rt, account) if account else None
        # Mark the upload as begun before it begins: a later attempt that sees no mark knows there is
        # no object to look for in S3.
        first_attempt = not job.extra.get("store_started_at")
        if first_attempt:
            rt.jobs.update(job_id, expect=JobState.DOWNLOADING, fields={"store_started_at": time.time()})
        # Outputs already stored by an earlier attempt stay; the others are fetched, in order.
        outputs = {int(output["index"]): output for output in job.outputs if "index" in output}
        try:
            with tracing.job_span("imagineq.store", job, outputs=len(urls)):
                fresh_bytes = _store_outputs(rt, job, urls, outputs, refresh, first_attempt=first_attempt)
        except ResultGone as error:
            rt.jobs.transition(
                job_id,
                JobState.EXPIRED,
                expect=JobState.DOWNLOADING,
                read=job,
                fields={"reason": error.reason, "error": str(error)},
            )
            log.warning("store: job %s result is gone: %s", job_id, error)
            return None
        except (StorageError, UpstreamError) as error:
            if not error.retryable:
                fail_job(rt, job_id, JobState.DOWNLOADING, error.reason, str(error))
                return None
            attempts = rt.jobs.incr(job_id, "store_attempts")
            if attempts >= MAX_TRANSIENT_ATTEMPTS:
                fail_job(
                    rt,
                    job_id,
                    JobState.DOWNLOADING,
                    error.reason,
                    f"gave up after {attempts} attempts: {error}",
                )
                return None
            log.warning("store: job %s attempt %d failed: %s", job_id, attempts, error)
            requeue(self, countdown=backoff_s(attempts, base_s=2.0, cap_s=30.0))
        listed = _in_order(outputs)
        first = listed[0]
        rt.jobs.transition(
            job_id,
            JobState.STORED,
            expect=JobState.DOWNLOADING,
            read=job,
            fields={
                "s3_uri": first["uri"],
                "size": first["size"],
                "sha256": first["sha256"],
                "outputs": encode_json(listed),
            },
        )
        if fresh_bytes:
            rt.redis.hincrby(rt.keys.counters(), "bytes_stored", fresh_bytes)
        total = sum(int(output["size"]) for output in listed)
        log.info("store: job %s stored %d output(s) at %s (%d bytes)", job_id, len(listed), first["uri"], total)
        return job_id


def _in_order(outputs: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    return [outputs[index] for index in sorted(outputs)]


def _refresher(rt: Runtime, account: str) -> Callable[[str], str]:
    """download-url for an expired result link; the upstream not knowing the file means it is gone."""
    client = rt.upstream(account)

    def refresh(url: str) -> str:
        try:
            return client.download_url(url)
        except NotFound as error:
            raise ResultGone(f"the upstream no longer has the file: {error}", url=url) from error

    return refresh


def _store_outputs(
    rt: Runtime,
    job: Job,
    urls: list[str],
    outputs: dict[int, dict[str, Any]],
    refresh: Any,
    *,
    first_attempt: bool,
) -> int:
    """Fetch each result not stored yet into S3, in order (``outputs`` gains them); the new bytes."""
    fresh_bytes = 0
    for index, url in enumerate(urls):
        if index in outputs:
            continue
        stored = rt.storage.store(
            job_id=job.id,
            task_id=job.task_id,
            account=job.account,
            url=url,
            created_at=datetime.fromtimestamp(job.created_at, tz=UTC),
            prompt_sha256=hashlib.sha256(job.prompt.encode()).hexdigest(),
            sidecar=job.to_dict(),
            refresh=refresh,
            first_attempt=first_attempt,
            index=index,
            kind=job.spec.output_of(job.parent_output),
        )
        outputs[index] = stored.output(index)
        fresh_bytes += stored.size if stored.created else 0
        if len(urls) > 1:  # progress kept, so a retry fetches only what is missing
            rt.jobs.update(job.id, expect=JobState.DOWNLOADING, fields={"outputs": encode_json(_in_order(outputs))})
    return fresh_bytes
