"""The ``submit`` step: take quota, call createTask, record the taskId; recover interrupted submits."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Literal

from celery import Task

from config.celery import SUBMIT_TIME_LIMIT_S, TASK_SUBMIT, TIME_LIMITS
from core import tracing
from core.catalog import MODELS, Resolved
from core.errors import (
    AccountError,
    FatalError,
    OutcomeUnknown,
    RetryableError,
    UpstreamError,
)
from core.jobs import Job, JobState
from core.jobstore_args import FieldValue
from core.messages import broker_priority
from workers.celery import app
from workers.completion import take_wake
from workers.inputs import InputError
from workers.runtime import Runtime
from workers.schedule import backoff_s
from workers.tasks.process import runtime
from workers.tasks.quota_wait import next_dispatch
from workers.tasks.steps import MAX_TRANSIENT_ATTEMPTS, count, fail_job, publish_rest, requeue, stop_chain

log = logging.getLogger("imagineq.tasks")

#: Jobs one submit message may submit back to back, when they may all go at once.
DRAIN_MAX = 8


@app.task(name=TASK_SUBMIT, bind=True, max_retries=None, **TIME_LIMITS[TASK_SUBMIT].options())
def submit(self: Task, job_id: str) -> str | None:
    """Submit the next job that may go: take it and its quota slot, call createTask, record the taskId.

    A submit message is a ticket: one is published per job made ready, and whichever submitter runs it
    takes the job that may go first (``QuotaLimiter.dispatch``), not necessarily the message's own, so a
    full pool never holds back another pool's jobs. The message's own job matters only to mend what a
    lost submitter left: a claim that outlived its submit, a queued job that is in no ready set."""
    rt = runtime()
    own = rt.jobs.get(job_id)
    if own is not None and own.state is JobState.SUBMITTING:
        # A duplicate message (e.g. the original of one the reconciler re-published, back after
        # the visibility timeout) must not break a live claim: recover only once no submit can still run.
        claimed_s = time.time() - own.timestamps.get(JobState.SUBMITTING.value, own.updated_at)
        if claimed_s < SUBMIT_TIME_LIMIT_S:
            requeue(self, countdown=SUBMIT_TIME_LIMIT_S - claimed_s + 1)
        recover_interrupted_submit(rt, own)
    elif own is not None and own.state is JobState.QUEUED:
        rt.jobs.make_ready(own, accounts=rt.quota.account_names)  # back from a delay, or its taker died

    submitted: str | None = None
    # Without the Redis quota (a benchmark's baseline) Celery's rate_limit alone paces submits: one each.
    for turn in range(DRAIN_MAX if rt.settings.quota_enforce else 1):
        # The first turn waits for room; later ones take only jobs that may go at once, so jobs whose
        # tickets were lost (Redis restarted while a worker held them) still go without waiting for
        # the reconciler, and a burst is submitted with fewer trips through the broker.
        dispatched = next_dispatch(rt, wait=turn == 0)
        if dispatched.empty:
            break  # nothing is ready: this ticket is spent
        if dispatched.job_id is None:
            if turn == 0:
                requeue(self)  # jobs wait for quota: the ticket goes back to the queue
            break
        assert dispatched.account is not None
        job, claimed = _claim(rt, dispatched.job_id, dispatched.pool, dispatched.account)
        if job is None or claimed is False:
            # Canceled (or gone) since it was made ready: its slot goes back, and the ticket takes another.
            rt.quota.release_unsent(dispatched.job_id, pool=dispatched.pool, accounts=[dispatched.account])
            continue
        if claimed is None:
            _not_acknowledged(rt, job)
            requeue(self)
        # The job's wait in the queue (from its record), then its submit: spans of its trace.
        tracing.past_span("imagineq.quota_wait", job, job.timestamps.get(JobState.QUEUED.value, job.created_at))
        with tracing.job_span("imagineq.submit", job, account=dispatched.account) as span:
            result = _submit_job(rt, job, dispatched.account, claimed)
            tracing.set_outcome(span, "requeued" if isinstance(result, _Requeue) else "created" if result else "ended")
        if isinstance(result, _Requeue):
            requeue(self, countdown=result.countdown)
        submitted = result or submitted
    stop_chain(self)
    return submitted


@dataclass(frozen=True)
class _Requeue:
    """The ticket goes back to the queue (after ``countdown``): the job went back to its ready set."""

    countdown: float = 0.0


@dataclass(frozen=True)
class _Claimed:
    """A job claimed (``submitting``) for createTask. ``marked``: the createTask marker went with the claim
    (acknowledged by a replica), and ``callback_url`` is the one it holds the secret of."""

    marked: bool
    callback_url: str | None = None


def _claim(rt: Runtime, job_id: str, pool: str, account: str) -> tuple[Job | None, _Claimed | Literal[False] | None]:
    """Read the dispatched job and move it from ``queued`` to ``submitting``, in one round trip: its record
    (None when gone) and the claim, False when it is no longer queued, None when moved but no replica
    acknowledged the move (the marker's case, see :func:`_not_acknowledged`).

    A job of a model without inputs has nothing left to do between its claim and createTask, so the
    createTask marker goes with the claim and one replica acknowledgement covers both, and the slot taken
    before them (a round trip and a WAIT fewer between a free slot and the next createTask). A job with
    inputs is marked only once they are ready (:func:`_submit_job`): a submit that dies while uploading
    them has sent nothing, and its job is queued again rather than failed ``outcome_unknown``."""
    marked = not MODELS[pool].takes_inputs
    callback_url, marker = _marker(rt, job_id, account) if marked else (None, {})
    job, moved = rt.jobs.claim(job_id, pool=pool, fields={"claim": uuid.uuid4().hex[:12], **marker}, acknowledge=marked)
    if moved is None or moved is False:
        return job, moved
    return job, _Claimed(marked=marked, callback_url=callback_url)


def _marker(rt: Runtime, job_id: str, account: str) -> tuple[str | None, dict[str, FieldValue]]:
    """The job's callBackUrl and the createTask marker's fields (the record keeps the URL's secret hashed)."""
    callback_url, token_hash = _callback_url(rt, job_id)
    return callback_url, {"account": account, "create_sent_at": time.time(), "callback_token_hash": token_hash}


def _not_acknowledged(rt: Runtime, job: Job) -> None:
    """The createTask marker is what tells a recovery that createTask may have gone out; one a failover
    could forget must not precede it. Not sent: the slot and its creation go back, the job waits."""
    log.warning("submit: job %s: no replica acknowledged its createTask marker; queued again", job.id)
    rt.quota.release_unsent(job.id, pool=job.pool)
    _back_to_queue(rt, job)


def _submit_job(rt: Runtime, job: Job, account: str, claimed: _Claimed) -> str | _Requeue | None:
    """createTask for ``job`` (claimed: ``submitting``) on ``account``, where it holds a slot in its pool.
    The job id once its task exists; None when the job is finished with (failed, or its outcome unknown);
    a :class:`_Requeue` when it went back to the queue."""
    job_id, pool = job.id, job.pool
    client = rt.upstream(account)
    try:
        resolved = rt.inputs.resolve(job, client) if job.spec.takes_inputs else Resolved()
    except (InputError, UpstreamError) as error:
        # Nothing was sent: the slot and the creation it spent go back.
        rt.quota.release_unsent(job_id, pool=pool, accounts=[account])
        return _input_failed(rt, job, account, error)
    callback_url = claimed.callback_url
    if not claimed.marked:
        callback_url, fields = _marker(rt, job_id, account)
        if not rt.jobs.update_acknowledged(job_id, expect=JobState.SUBMITTING, fields=fields):
            _not_acknowledged(rt, job)
            return _Requeue()
    try:
        task_id = client.create_task(
            job.spec.upstream_input(job.values, resolved), model=job.spec.name, callback_url=callback_url
        )
    except OutcomeUnknown as error:
        rt.quota.hold(account, job_id, pool=pool)
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
        return None
    except AccountError as error:
        rt.quota.pause(account, error.reason)
        rt.quota.release(account, job_id, pool=pool)
        count(rt, f"upstream_error:{error.code or error.status}")
        log.error("submit: account %s paused (%s); job %s goes back to the queue", account, error, job_id)
        _back_to_queue(rt, job)
        return _Requeue()
    except FatalError as error:
        rt.quota.release(account, job_id, pool=pool)
        count(rt, f"upstream_error:{error.code or error.status}")
        fail_job(rt, job_id, JobState.SUBMITTING, error.reason, str(error))
        return None
    except RetryableError as error:
        rt.quota.release(account, job_id, pool=pool)
        count(rt, f"upstream_error:{error.code or error.status or 'transport'}")
        if error.cools_down_account and rt.settings.quota_enforce:
            applied = rt.quota.cooldown(account, error.retry_after_s)
            log.warning("submit: account %s cooling down %.1fs after %s (job %s)", account, applied, error, job_id)
            _back_to_queue(rt, job)
            return _Requeue()  # an account-wide wait: never counts against the job
        attempts = rt.jobs.incr(job_id, "submit_attempts")
        if attempts >= MAX_TRANSIENT_ATTEMPTS:
            fail_job(rt, job_id, JobState.SUBMITTING, error.reason, f"gave up after {attempts} attempts: {error}")
            return None
        # This job waits out its backoff outside the ready set: its own message, delayed, puts it back.
        _back_to_queue(rt, job, ready=False)
        submit.apply_async((job_id,), countdown=backoff_s(attempts), priority=broker_priority(job))
        return None

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


def _input_failed(rt: Runtime, job: Job, account: str, error: InputError | UpstreamError) -> _Requeue | None:
    """The job's inputs could not be made ready (before any createTask): the job fails, waits (its
    account paused or cooling down), or tries again after a backoff."""
    if isinstance(error, AccountError):
        rt.quota.pause(account, error.reason)
        _back_to_queue(rt, job)
        return _Requeue()
    if isinstance(error, RetryableError) and error.cools_down_account and rt.settings.quota_enforce:
        rt.quota.cooldown(account, error.retry_after_s)
        _back_to_queue(rt, job)
        return _Requeue()
    if not error.retryable:
        fail_job(rt, job.id, JobState.SUBMITTING, error.reason, f"input: {error}")
        return None
    attempts = rt.jobs.incr(job.id, "submit_attempts")
    if attempts >= MAX_TRANSIENT_ATTEMPTS:
        fail_job(rt, job.id, JobState.SUBMITTING, error.reason, f"input: gave up after {attempts} attempts: {error}")
        return None
    log.warning("submit: job %s inputs not ready (%s); again in a while", job.id, error)
    _back_to_queue(rt, job, ready=False)
    submit.apply_async((job.id,), countdown=backoff_s(attempts), priority=broker_priority(job))
    return None


def recover_interrupted_submit(rt: Runtime, job: Job) -> Job | None:
    """A submit died mid-way (redelivered message or reconciler). Decide from what the record shows."""
    if job.extra.get("create_sent_at"):
        # createTask may have been sent: never resubmit blindly.
        if job.account:
            rt.quota.hold(job.account, job.id, pool=job.pool)
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
    rt.quota.release_unsent(job.id, pool=job.pool)
    if rt.jobs.transition(job.id, JobState.QUEUED, expect=JobState.SUBMITTING, read=job, fields={"claim": None}):
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
        charge=True,  # the task may exist: its credits are taken as spent
    )
    if moved and task_id is not None and (job := rt.jobs.get(job_id)):
        log.warning("job %s: createTask's answer was lost but task %s called back; asking for it", job_id, task_id)
        publish_rest(job, woken=True)
    return moved


def _back_to_queue(rt: Runtime, job: Job, *, ready: bool = True) -> None:
    """The claimed job goes back to ``queued``: into its ready set, or (``ready`` False) out of every
    submitter's sight until its own message puts it back."""
    rt.jobs.transition(
        job.id,
        JobState.QUEUED,
        expect=JobState.SUBMITTING,
        read=job,
        fields={"claim": None, "account": None, "create_sent_at": None},
        ready=ready,
    )


def _callback_url(rt: Runtime, job_id: str) -> tuple[str | None, str | None]:
    """The job's callBackUrl with a per-job secret; the record keeps only the secret's hash."""
    base = rt.settings.callbacks.public_base_url
    if base is None:
        return None, None
    token = uuid.uuid4().hex + uuid.uuid4().hex
    return f"{base.rstrip('/')}/v1/callbacks/{job_id}/{token}", hashlib.sha256(token.encode()).hexdigest()
