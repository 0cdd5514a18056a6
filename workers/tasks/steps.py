"""What every step of a job does: stop its chain, re-publish itself, pass the job on, fail it, count."""

from __future__ import annotations

import logging
from typing import NoReturn

from celery import Task

from core.jobs import Job, JobState
from workers.celery import app
from workers.chains import rest_of_job
from workers.runtime import Runtime

log = logging.getLogger("imagineq.tasks")


#: Transient failures of one step before the job fails (quota waits and cooldowns never count).
MAX_TRANSIENT_ATTEMPTS = 6


def stop_chain(task: Task) -> None:
    """The job is finished with (or another actor owns it): later steps of this chain must not run."""
    task.request.chain = None
    task.request.callbacks = None


def requeue(task: Task, *, countdown: float = 0.0) -> NoReturn:
    """Re-publish this message (same chain, same priority). countdown 0 → no ETA: back of the queue."""
    raise task.retry(countdown=countdown, max_retries=None)


def publish_rest(job: Job, *, woken: bool = False) -> None:
    """Publish the rest of the job's chain: ``chain(poll, store)``, or ``store`` once generated.
    ``woken``: a callback said the task ended, so the poll asks recordInfo at once."""
    rest_of_job(app, job, woken=woken).apply_async()


def fail_job(rt: Runtime, job_id: str, expect: JobState, reason: str, message: str) -> bool:
    moved = rt.jobs.transition(
        job_id, JobState.FAILED, expect=expect, fields={"reason": reason, "error": message[:1000]}
    )
    if moved:
        log.warning("job %s failed (%s): %s", job_id, reason, message)
    return moved


def count(rt: Runtime, counter: str, by: int = 1) -> None:
    rt.redis.hincrby(rt.keys.counters(), counter, by)
