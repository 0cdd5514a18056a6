"""The ``submit`` step: take quota, call createTask, record the taskId; recover interrupted submits."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid

from celery import Task

from config.celery import SUBMIT_TIME_LIMIT_S, TASK_SUBMIT, TIME_LIMITS
from core.errors import (
    AccountError,
    FatalError,
    OutcomeUnknown,
    RetryableError,
)
from core.jobs import Job, JobState
from workers.celery import app
from workers.completion import take_wake
from workers.runtime import Runtime
from workers.schedule import backoff_s
from workers.tasks.process import runtime
from workers.tasks.quota_wait import wait_for_slot
from workers.tasks.steps import MAX_TRANSIENT_ATTEMPTS, count, fail_job, publish_rest, requeue, stop_chain

log = logging.getLogger("imagineq.tasks")


@app.task(name=TASK_SUBMIT, bind=True, max_retries=None, **TIME_LIMITS[TASK_SUBMIT].options())
def submit(self: Task, job_id: str) -> str | None:
    """Take quota, call createTask, record the taskId. Waits for quota in-process, then re-publishes."""
    rt = runtime()
    job = rt.jobs.get(job_id)
    if job is None:
        log.warning("submit: job %s not found (expired or never written)", job_id)
        stop_chain(self)
        return None
    if job.state is JobState.SUBMITTING:
        # A duplicate message (e.g. the original of one the reconciler re-published, back after
        # the visibility timeout) must not break a live claim: recover only once no submit can still run.
        claimed_s = time.time() - job.timestamps.get(JobState.SUBMITTING.value, job.updated_at)
        if claimed_s < SUBMIT_TIME_LIMIT_S:
            requeue(self, countdown=SUBMIT_TIME_LIMIT_S - claimed_s + 1)
        job = recover_interrupted_submit(rt, job)
        if job is None:
            stop_chain(self)
            return None
    if job.state in (JobState.GENERATING, JobState.DOWNLOADING):
        publish_rest(job)  # redelivered after createTask succeeded: carry on
        return job_id
    if job.state is not JobState.QUEUED:
        log.info("submit: job %s is %s, nothing to do", job_id, job.state.value)
        stop_chain(self)
        return None
    claim = uuid.uuid4().hex[:12]
    if not rt.jobs.transition(job_id, JobState.SUBMITTING, expect=JobState.QUEUED, fields={"claim": claim}):
        stop_chain(self)  # another submitter (a duplicate message) got there first
        return None

    account = wait_for_slot(rt, job_id)
    if account is None:
        rt.jobs.transition(job_id, JobState.QUEUED, expect=JobState.SUBMITTING, fields={"claim": None})
        requeue(self)

    callback_url, token_hash = _callback_url(rt, job_id)
    marked = rt.jobs.update_acknowledged(
        job_id,
        expect=JobState.SUBMITTING,
        fields={"account": account, "create_sent_at": time.time(), "callback_token_hash": token_hash},
    )
    if marked is None:
        # The marker is what tells a recovery that createTask may have gone out; one a failover could
        # forget must not precede it. Not sent: the slot and its creation go back, the job waits.
        log.warning("submit: job %s: no replica acknowledged its createTask marker; queued again", job_id)
        rt.quota.release_unsent(job_id)
        _back_to_queue(rt, job_id)
        requeue(self)
    client = rt.upstream(account)
    try:
        task_id = client.create_task(
            prompt=job.prompt, aspect_ratio=job.aspect_ratio, mode=job.mode, callback_url=callback_url
        )
    except OutcomeUnknown as error:
        rt.quota.hold(account, job_id)
        fail_unknown(
            rt,
            job_id,
            {
                "reason": error.reason,
                "error": f"createTask outcome unknown ({error}); "
                "not resubmitted automatically: `imagineq resubmit JOB_ID` retries it",
            },
        )
        log.error("submit: job %s createTask outcome unknown on account %s", job_id, account)
        stop_chain(self)
        return None
    except AccountError as error:
        rt.quota.pause(account, error.reason)
        rt.quota.release(account, job_id)
        count(rt, f"upstream_error:{error.code or error.status}")
        log.error("submit: account %s paused (%s); job %s goes back to the queue", account, error, job_id)
        _back_to_queue(rt, job_id)
        requeue(self)
    except FatalError as error:
        rt.quota.release(account, job_id)
        count(rt, f"upstream_error:{error.code or error.status}")
        fail_job(rt, job_id, JobState.SUBMITTING, error.reason, str(error))
        stop_chain(self)
        return None
    except RetryableError as error:
        rt.quota.release(account, job_id)
        count(rt, f"upstream_error:{error.code or error.status or 'transport'}")
        if error.cools_down_account and rt.settings.quota_enforce:
            applied = rt.quota.cooldown(account, error.retry_after_s)
            log.warning("submit: account %s cooling down %.1fs after %s (job %s)", account, applied, error, job_id)
            _back_to_queue(rt, job_id)
            requeue(self)  # an account-wide wait: never counts against the job
        attempts = rt.jobs.incr(job_id, "submit_attempts")
        if attempts >= MAX_TRANSIENT_ATTEMPTS:
            fail_job(rt, job_id, JobState.SUBMITTING, error.reason, f"gave up after {attempts} attempts: {error}")
            stop_chain(self)
            return None
        _back_to_queue(rt, job_id)
        requeue(self, countdown=backoff_s(attempts))

    rt.quota.note_success(account)
    if not rt.jobs.transition(
        job_id,
        JobState.GENERATING,
        expect=JobState.SUBMITTING,
        fields={"task_id": task_id, "claim": None},
    ):
        # Canceled or failed meanwhile: the upstream task exists, so its lease stays until it ends.
        log.warning("submit: job %s left submitting while createTask ran (task %s)", job_id, task_id)
    elif rt.settings.callbacks.enabled and take_wake(rt.redis, rt.keys, job_id) == task_id:
        # The task's callback beat this move (the web left a marker): the chain's poll asks at once.
        log.info("submit: job %s → task %s on account %s, already called back", job_id, task_id, account)
        publish_rest(job, woken=True)
        return job_id
    log.info("submit: job %s → task %s on account %s", job_id, task_id, account)
    publish_rest(job)
    return job_id


def recover_interrupted_submit(rt: Runtime, job: Job) -> Job | None:
    """A submit died mid-way (redelivered message or reconciler). Decide from what the record shows."""
    if job.extra.get("create_sent_at"):
        # createTask may have been sent: never resubmit blindly.
        if job.account:
            rt.quota.hold(job.account, job.id)
        fail_unknown(
            rt,
            job.id,
            {
                "reason": "outcome_unknown",
                "error": "a submit worker died while createTask was in "
                "flight; not resubmitted automatically: `imagineq resubmit JOB_ID` retries it",
            },
        )
        return None
    # No marker (written, and acknowledged by a replica, before any createTask): nothing was sent, so
    # the slot and the creation it spent go back.
    rt.quota.release_unsent(job.id)
    if rt.jobs.transition(job.id, JobState.QUEUED, expect=JobState.SUBMITTING, fields={"claim": None}):
        return rt.jobs.get(job.id)
    return None


def fail_unknown(rt: Runtime, job_id: str, fields: dict[str, str]) -> bool:
    """Fail a submitting job whose createTask may have reached the upstream (``outcome_unknown``: never
    resubmitted blindly). If the task's callback already came while the job was submitting (the web left
    a marker naming the task), the task id is written in the same move (``transition`` keeps the task
    index; ``update`` may not write it) and a woken poll reads that task's record from the upstream, so a
    success is stored after all (failed → downloading). A callback that comes later wakes the same poll
    through the web. False when the job was no longer submitting."""
    task_id = take_wake(rt.redis, rt.keys, job_id) if rt.settings.callbacks.enabled else None
    moved = rt.jobs.transition(
        job_id,
        JobState.FAILED,
        expect=JobState.SUBMITTING,
        fields={**fields, **({"task_id": task_id} if task_id else {})},
    )
    if moved and task_id is not None and (job := rt.jobs.get(job_id)):
        log.warning("job %s: createTask's answer was lost but task %s called back; asking for it", job_id, task_id)
        publish_rest(job, woken=True)
    return moved


def _back_to_queue(rt: Runtime, job_id: str) -> None:
    rt.jobs.transition(
        job_id,
        JobState.QUEUED,
        expect=JobState.SUBMITTING,
        fields={"claim": None, "account": None, "create_sent_at": None},
    )


def _callback_url(rt: Runtime, job_id: str) -> tuple[str | None, str | None]:
    """The job's callBackUrl with a per-job secret; the record keeps only the secret's hash."""
    base = rt.settings.callbacks.public_base_url
    if base is None:
        return None, None
    token = uuid.uuid4().hex + uuid.uuid4().hex
    return f"{base.rstrip('/')}/v1/callbacks/{job_id}/{token}", hashlib.sha256(token.encode()).hexdigest()
