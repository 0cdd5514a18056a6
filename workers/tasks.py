"""The three steps of a job — ``chain(submit, poll, store)`` — and their idempotency rules.

A queued job's message is ``submit`` alone: the backlog can be millions of jobs deep, and a chain
serialised into every waiting message would double its size in Redis. When submit has created the
upstream task it links the rest, ``chain(poll, store)``, so from there on a job is one chain.

Messages carry the job id only. Every step re-reads the job record (the truth), acts only when the job
is in the state the step expects, and moves it on with a compare-and-set, so a redelivered message, a
callback and a poll can race safely: whoever loses the CAS does nothing.

Retries are decided from the error class alone (``workers.errors``): waiting for quota, cooldowns and
pauses re-publish the job without ETA and never count against the job; transient errors count and back
off; fatal errors fail the job with a reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, NoReturn

from celery import Task, chain
from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from config.celery import SUBMIT_TIME_LIMIT_S, TASK_POLL, TASK_STORE, TASK_SUBMIT
from config.settings import ConfigError, get_settings
from workers.celery import app
from workers.clients import release_token_lock
from workers.completion import Applied, apply_early, apply_terminal
from workers.errors import (
    AccountError,
    FatalError,
    NotFound,
    OutcomeUnknown,
    RetryableError,
    UpstreamError,
)
from workers.jobs import Job, JobState
from workers.runtime import Runtime
from workers.schedule import backoff_s, poll_delay_s, safety_poll_delay_s
from workers.storage import ResultGone, StorageError

log = logging.getLogger("imagineq.tasks")

#: Transient failures of one step before the job fails (quota waits and cooldowns never count).
MAX_TRANSIENT_ATTEMPTS = 6
#: A store claim lives this long unless its heartbeat renews it (a killed worker frees it quickly).
STORE_CLAIM_TTL_S = 15.0

_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """This process's clients, built on first use (after the pool forks)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime.build(get_settings())
        return _runtime


@worker_init.connect
def _require_accounts(**_: Any) -> None:
    """[issue 8] A worker without an upstream account would fail every submit and strand its jobs in
    ``submitting``: refuse to start instead, naming the missing setting (exit status 2, like the CLI).
    SystemExit, because Celery logs and ignores exceptions raised by signal receivers."""
    try:
        get_settings().require_accounts()
    except ConfigError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None


@worker_process_init.connect
def _reset_after_fork(**_: Any) -> None:
    global _runtime
    _runtime = None


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    if _runtime is not None:
        _runtime.close()


def _stop_chain(task: Task) -> None:
    """The job is finished with (or another actor owns it): later steps of this chain must not run."""
    task.request.chain = None
    task.request.callbacks = None


def _requeue(task: Task, *, countdown: float = 0.0) -> NoReturn:
    """Re-publish this message (same chain, same priority). countdown 0 → no ETA: back of the queue."""
    raise task.retry(countdown=countdown, max_retries=None)


# -- submit ---------------------------------------------------------------------------------------------


@app.task(name=TASK_SUBMIT, bind=True, max_retries=None, soft_time_limit=100, time_limit=120)
def submit(self: Task, job_id: str) -> str | None:
    """Take quota, call createTask, record the taskId. Waits for quota in-process, then re-publishes."""
    rt = runtime()
    job = rt.jobs.get(job_id)
    if job is None:
        log.warning("submit: job %s not found (expired or never written)", job_id)
        _stop_chain(self)
        return None
    if job.state is JobState.SUBMITTING:
        # [issue 6] A duplicate message (e.g. the original of one the reconciler re-published, back after
        # the visibility timeout) must not break a live claim: recover only once no submit can still run.
        claimed_s = time.time() - job.timestamps.get(JobState.SUBMITTING.value, job.updated_at)
        if claimed_s < SUBMIT_TIME_LIMIT_S:
            _requeue(self, countdown=SUBMIT_TIME_LIMIT_S - claimed_s + 1)
        job = _recover_interrupted_submit(rt, job)
        if job is None:
            _stop_chain(self)
            return None
    if job.state in (JobState.GENERATING, JobState.DOWNLOADING):
        _continue(job)  # redelivered after createTask succeeded: carry on
        return job_id
    if job.state is not JobState.QUEUED:
        log.info("submit: job %s is %s, nothing to do", job_id, job.state.value)
        _stop_chain(self)
        return None
    claim = uuid.uuid4().hex[:12]
    if not rt.jobs.transition(job_id, JobState.SUBMITTING, expect=JobState.QUEUED, fields={"claim": claim}):
        _stop_chain(self)  # another submitter (a duplicate message) got there first
        return None

    account = _wait_for_slot(rt, job_id)
    if account is None:
        rt.jobs.transition(job_id, JobState.QUEUED, expect=JobState.SUBMITTING, fields={"claim": None})
        _requeue(self)

    callback_url, token_hash = _callback_url(rt, job_id)
    rt.jobs.update(
        job_id,
        expect=JobState.SUBMITTING,
        fields={"account": account, "create_sent_at": time.time(), "callback_token_hash": token_hash},
    )
    client = rt.upstream(account)
    try:
        task_id = client.create_task(
            prompt=job.prompt, aspect_ratio=job.aspect_ratio, mode=job.mode, callback_url=callback_url
        )
    except OutcomeUnknown as error:
        rt.quota.hold(account, job_id)
        rt.jobs.transition(
            job_id, JobState.FAILED, expect=JobState.SUBMITTING,
            fields={"reason": error.reason, "error": f"createTask outcome unknown ({error}); "
                    "not resubmitted automatically: `imagineq resubmit JOB_ID` retries it"},
        )  # fmt: skip
        log.error("submit: job %s createTask outcome unknown on account %s", job_id, account)
        _settle_unknown(rt, job_id)
        _stop_chain(self)
        return None
    except AccountError as error:
        rt.quota.pause(account, error.reason)
        rt.quota.release(account, job_id)
        _count(rt, f"upstream_error:{error.code or error.status}")
        log.error("submit: account %s paused (%s); job %s goes back to the queue", account, error, job_id)
        _back_to_queue(rt, job_id)
        _requeue(self)
    except FatalError as error:
        rt.quota.release(account, job_id)
        _count(rt, f"upstream_error:{error.code or error.status}")
        _fail(rt, job_id, JobState.SUBMITTING, error.reason, str(error))
        _stop_chain(self)
        return None
    except RetryableError as error:
        rt.quota.release(account, job_id)
        _count(rt, f"upstream_error:{error.code or error.status or 'transport'}")
        if error.cools_down_account and rt.settings.quota_enforce:
            applied = rt.quota.cooldown(account, error.retry_after_s)
            log.warning(
                "submit: account %s cooling down %.1fs after %s (job %s)", account, applied, error, job_id
            )
            _back_to_queue(rt, job_id)
            _requeue(self)  # an account-wide wait: never counts against the job
        attempts = rt.jobs.incr(job_id, "submit_attempts")
        if attempts >= MAX_TRANSIENT_ATTEMPTS:
            _fail(
                rt, job_id, JobState.SUBMITTING, error.reason, f"gave up after {attempts} attempts: {error}"
            )
            _stop_chain(self)
            return None
        _back_to_queue(rt, job_id)
        _requeue(self, countdown=backoff_s(attempts))

    rt.quota.note_success(account)
    if not rt.jobs.transition(
        job_id, JobState.GENERATING, expect=JobState.SUBMITTING,
        fields={"task_id": task_id, "claim": None},
    ):  # fmt: skip
        # Canceled or failed meanwhile: the upstream task exists, so its lease stays until it ends.
        log.warning("submit: job %s left submitting while createTask ran (task %s)", job_id, task_id)
    elif rt.settings.callbacks.enabled:
        # [issue 5] A callback that beat this move was stashed by the web: apply it now (the chain's poll
        # then sees the new state and passes the job on to store, or stops).
        apply_early(rt.redis, rt.keys, rt.jobs, rt.quota, job_id)
    log.info("submit: job %s → task %s on account %s", job_id, task_id, account)
    _continue(job)
    return job_id


def _continue(job: Job) -> None:
    """Publish the rest of the job's chain: ``chain(poll, store)``, or ``store`` once generated."""
    steps = [TASK_STORE] if job.state is JobState.DOWNLOADING else [TASK_POLL, TASK_STORE]
    chain(*(app.signature(name, args=(job.id,), immutable=True) for name in steps)).apply_async()


def _wait_for_slot(rt: Runtime, job_id: str) -> str | None:
    """Wait in-process (bounded well below the visibility timeout) for a quota slot on any account."""
    if not rt.settings.quota_enforce:
        return rt.settings.accounts[0].name  # benchmark baseline: Celery rate_limit alone
    deadline = time.monotonic() + rt.settings.quota_wait_max_s
    while True:
        acquired = rt.quota.acquire_slot(job_id)
        if acquired.account is not None:
            return acquired.account
        if acquired.reason == "paused":
            _maybe_resume_paused(rt)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(max(0.01, min(acquired.wait_s, remaining)))


def _maybe_resume_paused(rt: Runtime) -> None:
    """A paused account resumes by itself once a credits check succeeds (one checker at a time)."""
    for account in rt.settings.accounts:
        if rt.quota.paused(account.name) is None:
            continue
        gate = rt.keys.pause_check(account.name)
        if not rt.redis.set(gate, "1", nx=True, px=int(rt.settings.pause_check_interval_s * 1000)):
            continue
        try:
            credits = rt.upstream(account.name).credits()
        except UpstreamError as error:
            log.info("account %s still paused: credits check failed (%s)", account.name, error)
            continue
        if credits > 0:
            rt.quota.resume(account.name)
            log.warning("account %s resumed: %d credits available", account.name, credits)


def _recover_interrupted_submit(rt: Runtime, job: Job) -> Job | None:
    """A submit died mid-way (redelivered message or reconciler). Decide from what the record shows."""
    if job.extra.get("create_sent_at"):
        # createTask may have been sent: never resubmit blindly.
        if job.account:
            rt.quota.hold(job.account, job.id)
        failed = rt.jobs.transition(
            job.id, JobState.FAILED, expect=JobState.SUBMITTING,
            fields={"reason": "outcome_unknown", "error": "a submit worker died while createTask was in "
                    "flight; not resubmitted automatically: `imagineq resubmit JOB_ID` retries it"},
        )  # fmt: skip
        if failed:
            _settle_unknown(rt, job.id)
        return None
    if job.account:
        rt.quota.release(job.account, job.id)
    if rt.jobs.transition(job.id, JobState.QUEUED, expect=JobState.SUBMITTING, fields={"claim": None}):
        return rt.jobs.get(job.id)
    return None


def _settle_unknown(rt: Runtime, job_id: str) -> None:
    """[issue 8] A job just failed ``outcome_unknown``: if the task's callback already came while the job
    was submitting (the web stashed it), the outcome is known after all, and a success is stored
    (failed → downloading). A callback that comes later is applied by the web the same way."""
    if (
        rt.settings.callbacks.enabled
        and apply_early(rt.redis, rt.keys, rt.jobs, rt.quota, job_id) is Applied.DOWNLOADING
        and (salvaged := rt.jobs.get(job_id)) is not None
    ):
        log.warning("job %s: createTask's answer was lost but its callback settled it; storing", job_id)
        _continue(salvaged)


def _back_to_queue(rt: Runtime, job_id: str) -> None:
    rt.jobs.transition(
        job_id, JobState.QUEUED, expect=JobState.SUBMITTING,
        fields={"claim": None, "account": None, "create_sent_at": None},
    )  # fmt: skip


def _callback_url(rt: Runtime, job_id: str) -> tuple[str | None, str | None]:
    """The job's callBackUrl with a per-job secret; the record keeps only the secret's hash."""
    base = rt.settings.callbacks.public_base_url
    if base is None:
        return None, None
    token = uuid.uuid4().hex + uuid.uuid4().hex
    return f"{base.rstrip('/')}/v1/callbacks/{job_id}/{token}", hashlib.sha256(token.encode()).hexdigest()


# -- poll -----------------------------------------------------------------------------------------------


@app.task(name=TASK_POLL, bind=True, max_retries=None, soft_time_limit=75, time_limit=90)
def poll(self: Task, job_id: str) -> str | None:
    """Ask recordInfo until the task is terminal; re-schedules itself with countdowns ≤ 30 s."""
    rt = runtime()
    job = rt.jobs.get(job_id)
    if job is None or job.state is not JobState.GENERATING:
        if job is not None and job.state is JobState.DOWNLOADING:
            return job_id  # a callback got there first; store is idempotent
        _stop_chain(self)
        return None
    assert job.account is not None and job.task_id is not None
    submitted_at = job.timestamps.get(JobState.GENERATING.value, job.updated_at)
    age_s = time.time() - submitted_at
    if age_s > rt.settings.poll.deadline_s:
        rt.quota.release(job.account, job_id)
        _fail(rt, job_id, JobState.GENERATING, "timed_out",
              f"no terminal state after {rt.settings.poll.deadline_s:.0f}s")  # fmt: skip
        _stop_chain(self)
        return None

    if rt.settings.callbacks.enabled and age_s < rt.settings.poll.safety_first_s:
        # [issue 5] Callbacks on: polling is a safety net, so the first recordInfo waits until
        # safety_first_s (the chain runs this poll right after submit).
        _requeue(self, countdown=safety_poll_delay_s(
            age_s, rt.settings.poll.safety_first_s, rt.settings.poll.safety_interval_s
        ))  # fmt: skip
    _take_record_info_token(rt, job.account)
    _count(rt, "record_info_calls")  # [issue 5] for /metrics
    try:
        record = rt.upstream(job.account).record_info(job.task_id)
    except FatalError as error:
        rt.quota.release(job.account, job_id)
        _count(rt, f"upstream_error:{error.code or error.status}")
        _fail(rt, job_id, JobState.GENERATING, error.reason, str(error))
        _stop_chain(self)
        return None
    except UpstreamError as error:
        # Transient or account-level trouble on a read: keep the lease, try again a little later.
        _count(rt, f"upstream_error:{error.code or error.status or 'transport'}")
        if isinstance(error, AccountError):
            rt.quota.pause(job.account, error.reason)
        attempts = rt.jobs.incr(job_id, "poll_errors")
        log.warning("poll: job %s recordInfo failed (%s), attempt %d", job_id, error, attempts)
        rt.quota.renew_lease(job.account, job_id)
        _requeue(self, countdown=min(30.0, backoff_s(attempts, base_s=2.0, cap_s=30.0)))

    if record.state.terminal:
        # The same move a callback or the reconciler makes: whoever comes second does nothing.
        applied = apply_terminal(rt.jobs, rt.quota, job, record)
        log.info("poll: job %s task %s is %s: %s", job_id, job.task_id, record.state.value, applied.value)
        if applied is Applied.DOWNLOADING:
            return job_id
        _stop_chain(self)  # failed, or a callback moved it first and enqueued store itself
        return None
    rt.quota.renew_lease(job.account, job_id)  # still running: keep the slot
    if rt.settings.callbacks.enabled:
        delay = safety_poll_delay_s(
            age_s, rt.settings.poll.safety_first_s, rt.settings.poll.safety_interval_s
        )
    else:
        delay = poll_delay_s(age_s, rt.settings.poll.schedule)
    _requeue(self, countdown=delay)


def _take_record_info_token(rt: Runtime, account: str) -> None:
    """The recordInfo token bucket is shared by every poll worker; wait (briefly) for a token."""
    deadline = time.monotonic() + 30
    while (wait_s := rt.quota.take_record_info_token(account)) > 0 and time.monotonic() < deadline:
        time.sleep(min(wait_s, 1.0))


# -- store ----------------------------------------------------------------------------------------------


@app.task(name=TASK_STORE, bind=True, max_retries=None, soft_time_limit=2900, time_limit=3000)
def store(self: Task, job_id: str) -> str | None:
    """Stream the result into S3; idempotent (an existing object is not re-uploaded)."""
    rt = runtime()
    job = rt.jobs.get(job_id)
    if job is None or job.state is not JobState.DOWNLOADING:
        return None
    with _store_claim(rt, job_id) as claimed:
        if not claimed:
            # Another store runs (or died < STORE_CLAIM_TTL_S ago): look again once its claim lapses.
            remaining_ms = int(rt.redis.pttl(rt.keys.store_claim(job_id)))  # type: ignore[arg-type]
            _requeue(self, countdown=max(remaining_ms, 0) / 1000 + 0.5)
        assert job.result_url is not None
        account = job.account
        refresh = _refresher(rt, account) if account else None
        # Mark the upload as begun before it begins: a later attempt that sees no mark knows there is
        # no object to look for in S3.
        first_attempt = not job.extra.get("store_started_at")
        if first_attempt:
            rt.jobs.update(job_id, expect=JobState.DOWNLOADING, fields={"store_started_at": time.time()})
        try:
            stored = rt.storage.store(
                job_id=job_id,
                task_id=job.task_id,
                account=account,
                url=job.result_url,
                created_at=datetime.fromtimestamp(job.created_at, tz=UTC),
                prompt_sha256=hashlib.sha256(job.prompt.encode()).hexdigest(),
                sidecar=job.to_dict(),
                refresh=refresh,
                first_attempt=first_attempt,
            )
        except ResultGone as error:
            rt.jobs.transition(
                job_id, JobState.EXPIRED, expect=JobState.DOWNLOADING, read=job,
                fields={"reason": error.reason, "error": str(error)},
            )  # fmt: skip
            log.warning("store: job %s result is gone: %s", job_id, error)
            return None
        except (StorageError, UpstreamError) as error:
            if not error.retryable:
                _fail(rt, job_id, JobState.DOWNLOADING, error.reason, str(error))
                return None
            attempts = rt.jobs.incr(job_id, "store_attempts")
            if attempts >= MAX_TRANSIENT_ATTEMPTS:
                _fail(
                    rt,
                    job_id,
                    JobState.DOWNLOADING,
                    error.reason,
                    f"gave up after {attempts} attempts: {error}",
                )
                return None
            log.warning("store: job %s attempt %d failed: %s", job_id, attempts, error)
            _requeue(self, countdown=backoff_s(attempts, base_s=2.0, cap_s=30.0))
        rt.jobs.transition(
            job_id, JobState.STORED, expect=JobState.DOWNLOADING, read=job,
            fields={"s3_uri": stored.uri, "size": stored.size, "sha256": stored.sha256},
        )  # fmt: skip
        if stored.created:
            rt.redis.hincrby(rt.keys.counters(), "bytes_stored", stored.size)
        log.info("store: job %s stored at %s (%d bytes)", job_id, stored.uri, stored.size)
        return job_id


def _refresher(rt: Runtime, account: str) -> Callable[[str], str]:
    """download-url for an expired result link; the upstream not knowing the file means it is gone."""
    client = rt.upstream(account)

    def refresh(url: str) -> str:
        try:
            return client.download_url(url)
        except NotFound as error:
            raise ResultGone(f"the upstream no longer has the file: {error}", url=url) from error

    return refresh


@contextlib.contextmanager
def _store_claim(rt: Runtime, job_id: str) -> Iterator[bool]:
    """A short-lived claim renewed by a heartbeat while the transfer runs."""
    key = rt.keys.store_claim(job_id)
    token = uuid.uuid4().hex
    ttl_ms = int(STORE_CLAIM_TTL_S * 1000)
    if not rt.redis.set(key, token, nx=True, px=ttl_ms):
        yield False
        return
    done = threading.Event()

    def _heartbeat() -> None:
        while not done.wait(STORE_CLAIM_TTL_S / 3):
            with contextlib.suppress(Exception):
                if rt.redis.get(key) == token:
                    rt.redis.pexpire(key, ttl_ms)

    beat = threading.Thread(target=_heartbeat, name=f"store-claim-{job_id}", daemon=True)
    beat.start()
    try:
        yield True
    finally:
        done.set()
        beat.join(timeout=5)
        with contextlib.suppress(Exception):
            release_token_lock(rt.redis, key, token)


# -- shared ---------------------------------------------------------------------------------------------


def _fail(rt: Runtime, job_id: str, expect: JobState, reason: str, message: str) -> bool:
    moved = rt.jobs.transition(
        job_id, JobState.FAILED, expect=expect, fields={"reason": reason, "error": message[:1000]}
    )
    if moved:
        log.warning("job %s failed (%s): %s", job_id, reason, message)
    return moved


def _count(rt: Runtime, counter: str, by: int = 1) -> None:
    rt.redis.hincrby(rt.keys.counters(), counter, by)
