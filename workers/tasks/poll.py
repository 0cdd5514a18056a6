"""The ``poll`` step: ask recordInfo until the upstream task is terminal, then end the job like a callback.

Each job's poll message re-runs (Celery countdown) when the account's poll plan (``workers/poll_plan.py``)
says its next check is due; a message woken by a callback asks at once instead.
"""

from __future__ import annotations

import logging
import time
from typing import NoReturn

from celery import Task

from config.celery import TASK_POLL, TIME_LIMITS
from core import tracing
from core.errors import (
    AccountError,
    FatalError,
    UpstreamError,
)
from core.jobs import Job, JobState
from workers.celery import app
from workers.completion import SALVAGEABLE_REASONS, Applied, apply_terminal
from workers.poll_plan import TurnCode
from workers.runtime import Runtime
from workers.schedule import MAX_POLL_DELAY_S, backoff_s, check_interval_s
from workers.tasks.process import runtime
from workers.tasks.steps import count, fail_job, requeue, stop_chain

log = logging.getLogger("imagineq.tasks")

#: A woken poll whose record is not terminal yet (it may lag the callback) asks again this soon...
WOKEN_RECHECK_S = 1.0
#: ...this many times, then follows the usual schedule.
WOKEN_RECHECKS = 5


@app.task(name=TASK_POLL, bind=True, max_retries=None, **TIME_LIMITS[TASK_POLL].options())
def poll(self: Task, job_id: str, woken: bool = False) -> str | None:
    """Ask recordInfo, when the poll plan says so, until the task is terminal.

    ``woken``: a callback said the task ended, so ask at once (and again soon, a few times, should the
    record lag the callback) — also for a job that failed ``timed_out`` or ``outcome_unknown``, whose
    task may have finished after all.
    """
    rt = runtime()
    job = rt.jobs.get(job_id)
    urgent = woken and self.request.retries < WOKEN_RECHECKS
    if job is not None and urgent and _salvageable(job):
        return _salvage(self, rt, job)
    if job is None or job.state is not JobState.GENERATING:
        if job is not None and job.state is JobState.DOWNLOADING:
            return job_id  # a callback got there first; store is idempotent
        stop_chain(self)
        return None
    assert job.account is not None and job.task_id is not None
    submitted_at = job.timestamps.get(JobState.GENERATING.value, job.updated_at)
    age_s = time.time() - submitted_at
    if age_s > rt.settings.poll.deadline_s:
        rt.quota.release(job.account, job_id, pool=job.pool)
        fail_job(
            rt, job_id, JobState.GENERATING, "timed_out", f"no terminal state after {rt.settings.poll.deadline_s:.0f}s"
        )
        stop_chain(self)
        return None

    poll_settings = rt.settings.poll
    callbacks = rt.settings.callbacks.enabled
    message = self.request.id
    if not urgent:
        # With callbacks on, polling is a safety net: the first check comes late.
        first_s = poll_settings.safety_first_s if callbacks else rt.catalog.first_check_s(job.spec)
        turn = rt.plan.turn(job.account, job_id, message, not_before_s=submitted_at + first_s)
        if turn.code is TurnCode.DUPLICATE:
            log.info("poll: job %s is followed by another poll message; this one stops", job_id)
            stop_chain(self)
            return None
        if turn.code is TurnCode.WAIT:
            requeue(self, countdown=min(turn.wait_s, MAX_POLL_DELAY_S))
    if not take_record_info_call(rt, job.account, job_id):
        requeue(self, countdown=1.0)  # the account's budget stayed spent (woken polls, salvage): soon
    count(rt, "record_info_calls")  # exported by /metrics
    try:
        with tracing.job_span("imagineq.poll", job, woken=woken) as span:
            record = rt.upstream(job.account).record_info(job.task_id)
            tracing.set_outcome(span, record.state.value)
    except FatalError as error:
        rt.quota.release(job.account, job_id, pool=job.pool)
        count(rt, f"upstream_error:{error.code or error.status}")
        fail_job(rt, job_id, JobState.GENERATING, error.reason, str(error))
        stop_chain(self)
        return None
    except UpstreamError as error:
        # Transient or account-level trouble on a read: keep the lease, try again a little later.
        count(rt, f"upstream_error:{error.code or error.status or 'transport'}")
        if isinstance(error, AccountError):
            rt.quota.pause(job.account, error.reason)
        attempts = rt.jobs.incr(job_id, "poll_errors")
        log.warning("poll: job %s recordInfo failed (%s), attempt %d", job_id, error, attempts)
        rt.quota.renew_lease(job.account, job_id, pool=job.pool)
        _next_check(self, rt, job.account, job_id, backoff_s(attempts, base_s=2.0, cap_s=30.0), urgent)

    if record.state.terminal:
        # The same move a callback or the reconciler makes: whoever comes second does nothing.
        applied = apply_terminal(rt.jobs, rt.quota, job, record)
        log.info("poll: job %s task %s is %s: %s", job_id, job.task_id, record.state.value, applied.value)
        if applied is Applied.DOWNLOADING:
            return job_id
        stop_chain(self)  # failed, or a callback moved it first and enqueued store itself
        return None
    rt.quota.renew_lease(job.account, job_id, pool=job.pool)  # still running: keep the slot
    if urgent:
        requeue(self, countdown=WOKEN_RECHECK_S)
    interval = poll_settings.safety_interval_s if callbacks else check_interval_s(age_s, poll_settings.schedule)
    _next_check(self, rt, job.account, job_id, interval, urgent)


def _next_check(task: Task, rt: Runtime, account: str, job_id: str, delay_s: float, urgent: bool) -> NoReturn:
    """Re-run this message for the job's next check: booked on the plan at least ``delay_s`` from now
    (a woken message keeps out of the plan: the job's own poll message holds its booking)."""
    if urgent:
        requeue(task, countdown=min(delay_s, MAX_POLL_DELAY_S))
    wait_s = rt.plan.book(account, job_id, task.request.id, delay_s=delay_s)
    requeue(task, countdown=min(wait_s, MAX_POLL_DELAY_S))


def _salvageable(job: Job) -> bool:
    return (
        job.state is JobState.FAILED
        and job.reason in SALVAGEABLE_REASONS
        and job.task_id is not None
        and job.account is not None
    )


def _salvage(task: Task, rt: Runtime, job: Job) -> str | None:
    """A failed job whose task called back: read the task's record, store a late success."""
    assert job.account is not None and job.task_id is not None
    if not take_record_info_call(rt, job.account, job.id):
        requeue(task, countdown=WOKEN_RECHECK_S)
    count(rt, "record_info_calls")
    try:
        record = rt.upstream(job.account).record_info(job.task_id)
    except UpstreamError as error:
        log.info("poll: job %s, woken after failing: recordInfo failed (%s); the reconciler retries", job.id, error)
        stop_chain(task)
        return None
    if not record.state.terminal:
        requeue(task, countdown=WOKEN_RECHECK_S)
    applied = apply_terminal(rt.jobs, rt.quota, job, record)
    log.info("poll: job %s (%s) task %s is %s: %s", job.id, job.reason, job.task_id, record.state.value, applied.value)
    if applied is Applied.DOWNLOADING:
        return job.id
    stop_chain(task)
    return None


def take_record_info_call(rt: Runtime, account: str, job_id: str) -> bool:
    """Log this recordInfo call on the account's rolling window (shared by every poll worker), waiting
    briefly while it is full; False if it stayed full (the caller re-runs later instead of calling)."""
    deadline = time.monotonic() + 10
    while (wait_s := rt.quota.take_record_info_call(account, job_id)) > 0:
        if time.monotonic() + wait_s > deadline:
            return False
        time.sleep(wait_s)
    return True
