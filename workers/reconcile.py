"""The reconciler (beat, every minute): jobs whose step was lost are driven on again.

Celery messages are only transport; the job record is the truth. The reconciler re-drives jobs whose
record says a step should be running when nothing shows it is, each case counted in the counters hash
(``reconcile:<case>``, exported by /metrics) and logged with the job id:

``stale_submit_requeued`` / ``stale_submit_unknown``
    ``submitting`` longer than ``reconcile_submitting_stale_s`` (well past submit's hard time limit, so the
    claimant is dead): what a redelivered submit would do (``recover_interrupted_submit``): back to
    ``queued`` and a new submit message — or, when createTask may have been sent, ``failed
    (outcome_unknown)`` with the lease held, never resubmitted blindly.
``silent_poll``
    ``generating`` with no poll activity (the lease's last renewal, the move into ``generating`` or the
    reconciler's last re-drive) for ``reconcile_poll_silent_s``: a new ``chain(poll, store)``. A lease that
    was reclaimed meanwhile is put back, since the task is still in progress upstream.
``unstored``
    ``downloading`` for ``reconcile_store_silent_s`` with no store running (no store claim): a new store.
``abandoned_dispatch``
    ``queued`` jobs a submitter took from their ready set (``keys.dispatched``) more than
    ``DISPATCH_GRACE_S`` ago without moving them on (it died in between): back in their ready sets, with
    the creation, request rate and lease the take spent given back (nothing was sent).
``terminal_lease`` / ``expired_lease``
    leases held by terminal (or vanished) jobs are released — except ``outcome_unknown`` holds, which run
    out by themselves — and expired leases are reclaimed.
``salvaged`` (and ``salvage_checked``)
    ``failed (timed_out)`` jobs, and ``failed (outcome_unknown)`` ones whose task a callback named, are
    asked again every ``reconcile_salvage_interval_s`` for
    ``reconcile_salvage_window_s``; a late success moves ``failed → downloading`` and is stored.
``store_retried``
    jobs whose store failed on an error that may pass (S3 or the network down for longer than the store's
    own retries: reasons ``transfer``, ``transport``, ``unavailable``, ``rate_limited``) are stored again
    (``failed → downloading``, a fresh retry budget), every ``reconcile_salvage_interval_s`` for
    ``reconcile_salvage_window_s``: the result URL lives on for 24 h.
``waiting_released`` / ``workflow_finished``
    ``waiting`` jobs (derived jobs waiting for their parent) whose parent ended more than
    ``RELEASE_GRACE_S`` ago without releasing them (the release thread died between the parent's end and
    the release), and workflows whose every node ended without their ``workflow.completed``: done now.
``batch_finalised``
    a batch whose every line is terminal gets its manifest, even when nobody waits for it.
``lost_message_suspected`` / ``lost_message``
    ``queued`` jobs with no ``submit`` message (a producer that died between its records and their
    messages, a Redis failure, a hand edit). Every run compares the counts (queued jobs vs. messages queued
    and in flight, :mod:`workers.broker_messages`); on a shortfall with a backlog small enough to read
    (≤ ``workers.lost_messages.LOST_SCAN_MAX_MESSAGES``) the messages are scanned for job ids, and a job queued for
    ``reconcile_lost_min_age_s`` and missing from two scans in a row gets a new message. A message unacked
    for longer than ``reconcile_submitting_stale_s`` belongs to a dead worker: it does not count. Bigger
    backlogs are only reported: reading millions of messages every minute costs more than the rare loss.

One run at a time (a Redis lock); each case looks at ``reconcile_limit`` jobs at most (oldest first); a
case that fails is logged and counted (``reconcile:error``) and does not stop the others.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Final, cast

from celery import Celery

from config.celery import (
    TASK_RECONCILE,
    TIME_LIMITS,
)
from core.clients import release_token_lock
from core.errors import NotFound, UpstreamError
from core.jobs import Job, JobState
from core.jobstore import DISPATCH_GRACE_S
from core.messages import submit_message
from core.quota import HELD_PREFIX
from workers.batch.locations import Files
from workers.batch.store import BatchStore
from workers.celery import app
from workers.chains import rest_of_job
from workers.completion import SALVAGEABLE_REASONS, Applied, apply_terminal
from workers.lost_messages import lost_queued_jobs
from workers.release import RELEASE_GRACE_S, repair_releases
from workers.runtime import Runtime
from workers.storage import build_s3_client
from workers.tasks.process import runtime
from workers.tasks.submit import recover_interrupted_submit
from workers.upstream import TaskState

log = logging.getLogger("imagineq.reconcile")

#: A run that dies leaves its lock for at most this long.
LOCK_TTL_S: Final = TIME_LIMITS[TASK_RECONCILE].hard_s
#: Failure reasons whose lease is deliberately held (the task may exist upstream): never released early.
HELD_REASONS: Final = frozenset({"outcome_unknown"})
#: recordInfo calls for salvage per run (they share the poll workers' rolling recordInfo log).
SALVAGE_CALLS_PER_RUN: Final = 20
#: Failure reasons of a store that may pass: the store is tried again while the result URL lives.
STORE_RETRY_REASONS: Final = frozenset({"transfer", "transport", "unavailable", "rate_limited"})
_SCAN: Final = 1000


class Reconciler:
    """One reconciler run over a deployment (``rt``), publishing through ``celery_app``."""

    def __init__(
        self,
        rt: Runtime,
        celery_app: Celery,
        *,
        files: Files | None = None,
        lost_min_age_s: float | None = None,
        release_grace_s: float = RELEASE_GRACE_S,
    ) -> None:
        self.rt = rt
        self.lost_min_age_s = rt.settings.reconcile_lost_min_age_s if lost_min_age_s is None else lost_min_age_s
        self.release_grace_s = release_grace_s
        self.app = celery_app
        self.settings = rt.settings
        self.batches = BatchStore(
            rt.redis, rt.keys, terminal_ttl_s=rt.settings.job_ttl_s, events_max_len=rt.settings.events_max_len
        )
        s3, http = rt.settings.s3, rt.settings.http
        self.files = files or Files(lambda: build_s3_client(s3, http))
        self.counts: Counter[str] = Counter()

    def run(self) -> dict[str, int]:
        """Every case once; returns (and adds to the counters hash) how many jobs each case touched."""
        lock = self.rt.keys.reconcile_lock()
        token = uuid.uuid4().hex
        if not self.rt.redis.set(lock, token, nx=True, px=LOCK_TTL_S * 1000):
            log.info("reconcile: another run is in progress")
            return {}
        try:
            cases: list[Callable[[], None]] = [
                self.stale_submits,
                self.silent_polls,
                self.unstored,
                self.leases,
                self.abandoned_dispatches,
                self.salvage,
                self.failed_stores,
                self.waiting_children,
                self.finalise_batches,
                self.lost_messages,
            ]
            for case in cases:
                try:
                    case()
                except Exception:
                    self.counts["error"] += 1
                    log.exception("reconcile: %s failed", case.__name__)
        finally:
            release_token_lock(self.rt.redis, lock, token)
        counts = {name: n for name, n in self.counts.items() if n}
        if counts:
            with self.rt.redis.pipeline(transaction=False) as pipe:
                for name, n in counts.items():
                    pipe.hincrby(self.rt.keys.counters(), f"reconcile:{name}", n)
                pipe.execute()
            log.info("reconcile: %s", ", ".join(f"{name}={n}" for name, n in sorted(counts.items())))
        return counts

    # -- cases --------------------------------------------------------------------------------------
    def stale_submits(self) -> None:
        for job in self._jobs_in(JobState.SUBMITTING, self.settings.reconcile_submitting_stale_s):
            recovered = recover_interrupted_submit(self.rt, job)
            if recovered is not None and recovered.state is JobState.QUEUED:
                self._publish_submit(recovered)
                self.counts["stale_submit_requeued"] += 1
                log.warning("reconcile: job %s was stuck submitting; queued again", job.id)
                continue
            current = self.rt.jobs.get(job.id)
            if current is not None and current.state is JobState.FAILED and current.reason in HELD_REASONS:
                self.counts["stale_submit_unknown"] += 1
                log.error(
                    "reconcile: job %s was stuck submitting after createTask was sent; failed "
                    "(outcome_unknown), not resubmitted",
                    job.id,
                )

    def silent_polls(self) -> None:
        silent_s = self.settings.reconcile_poll_silent_s
        now = self._now()
        ttl_s = self.rt.quota.lease_ttl_s
        for job in self._jobs_in(JobState.GENERATING, silent_s):
            if job.account is None:
                continue
            leases = self.rt.keys.leases(job.account, job.pool)
            expiry_ms = cast("float | None", self.rt.redis.zscore(leases, job.id))
            activity = [job.timestamps.get(JobState.GENERATING.value, job.updated_at)]
            if expiry_ms is not None:
                activity.append(expiry_ms / 1000 - ttl_s)  # the lease was last renewed then
            if "reconciled_poll_at" in job.extra:
                activity.append(float(job.extra["reconciled_poll_at"]))
            if now - max(activity) < silent_s:
                continue
            if expiry_ms is None:
                # Reclaimed while nobody polled, but the task is still running upstream: count it again.
                self.rt.redis.zadd(leases, {job.id: (now + ttl_s) * 1000}, nx=True)
            stamp = {"reconciled_poll_at": now}
            if not self.rt.jobs.update(job.id, expect=JobState.GENERATING, fields=stamp):
                continue
            self.rt.plan.forget(job.account, job.id)  # the new message books afresh; a late old one stops
            rest_of_job(self.app, job).apply_async()
            self.counts["silent_poll"] += 1
            log.warning("reconcile: job %s had no poll for %.0fs; poll re-published", job.id, now - max(activity))

    def unstored(self) -> None:
        silent_s = self.settings.reconcile_store_silent_s
        now = self._now()
        for job in self._jobs_in(JobState.DOWNLOADING, silent_s):
            if self.rt.redis.exists(self.rt.keys.store_claim(job.id)):
                continue  # a store is running
            activity = [job.timestamps.get(JobState.DOWNLOADING.value, job.updated_at)]
            if "reconciled_store_at" in job.extra:
                activity.append(float(job.extra["reconciled_store_at"]))
            if now - max(activity) < silent_s:
                continue
            stamp = {"reconciled_store_at": now}
            if not self.rt.jobs.update(job.id, expect=JobState.DOWNLOADING, fields=stamp):
                continue
            rest_of_job(self.app, job).apply_async()
            self.counts["unstored"] += 1
            log.warning("reconcile: job %s generated but not stored; store re-published", job.id)

    def leases(self) -> None:
        for name, job_ids in self.rt.quota.reclaim_expired().items():
            for job_id in job_ids:
                self.counts["expired_lease"] += 1
                log.warning("reconcile: expired lease of job %s on account %s reclaimed", job_id, name)
        for account, pool in ((account, pool) for account in self.settings.accounts for pool in self.rt.quota.pools):
            members = cast("list[str]", self.rt.redis.zrange(self.rt.keys.leases(account.name, pool), 0, -1))
            if not members:
                continue
            with self.rt.redis.pipeline(transaction=False) as pipe:
                for job_id in members:
                    pipe.hmget(self.rt.keys.job(job_id), ["state", "reason"])
                rows = pipe.execute()
            for job_id, (state, reason) in zip(members, rows, strict=True):
                if job_id.startswith(HELD_PREFIX):
                    continue  # an unknown task's slot, kept until its grace runs out
                if state is not None and not JobState(state).terminal:
                    continue
                if state == JobState.FAILED.value and reason in HELD_REASONS:
                    continue
                self.rt.quota.release(account.name, job_id, pool=pool)
                self.counts["terminal_lease"] += 1
                log.warning(
                    "reconcile: lease of %s job %s on account %s released", state or "vanished", job_id, account.name
                )

    def abandoned_dispatches(self) -> None:
        """Jobs a submitter took from a ready set but never moved out of queued (it died in between) go
        back to their ready sets; the dispatched set forgets everything older than the grace."""
        before_ms = (self._now() - DISPATCH_GRACE_S) * 1000
        key = self.rt.keys.dispatched()
        stale = cast("list[str]", self.rt.redis.zrangebyscore(key, "-inf", before_ms, start=0, num=_SCAN))
        for job in self.rt.jobs.get_many(stale):
            if (
                job is not None
                and job.state is JobState.QUEUED
                and self.rt.jobs.make_ready(job, accounts=self.rt.quota.account_names)
            ):
                self.counts["abandoned_dispatch"] += 1
                log.warning("reconcile: job %s was taken by a submitter that vanished; ready again", job.id)
        if stale:
            self.rt.redis.zremrangebyscore(key, "-inf", before_ms)  # a job taken again since keeps its entry

    def salvage(self) -> None:
        now = self._now()
        calls = 0
        fields = ["reason", "task_id", "account", "salvage", "salvage_checked_at"]
        for job_id, (reason, task_id, account, done, checked_at) in self._recent_failures(now, fields):
            if reason not in SALVAGEABLE_REASONS or not task_id or not account or done:
                continue
            if checked_at and now - float(checked_at) < self.settings.reconcile_salvage_interval_s:
                continue
            if calls >= SALVAGE_CALLS_PER_RUN or self.rt.quota.take_record_info_call(account, job_id) > 0:
                return  # the rest next run: polls come first
            calls += 1
            self._salvage_one(job_id, account, task_id, now)

    def failed_stores(self) -> None:
        now = self._now()
        window = self.settings.reconcile_salvage_window_s
        budget = self.settings.reconcile_limit
        fields = ["reason", "result_url", "store_retried_at", "completed_ms"]
        for job_id, (reason, result_url, retried_at, completed_ms) in self._recent_failures(now, fields):
            if reason not in STORE_RETRY_REASONS or not result_url:
                continue
            if completed_ms and now - float(completed_ms) / 1000 > window:
                continue  # the result URL (24 h from completion) is about to die: expired, not stored
            if retried_at and now - float(retried_at) < self.settings.reconcile_salvage_interval_s:
                continue
            if budget <= 0:
                return
            budget -= 1
            changes = {"reason": None, "error": None, "store_attempts": None, "store_retried_at": now}
            if self.rt.jobs.transition(job_id, JobState.DOWNLOADING, expect=JobState.FAILED, fields=changes):
                self._publish_rest(job_id)
                self.counts["store_retried"] += 1
                log.warning("reconcile: job %s failed to store (%s); storing it again", job_id, reason)

    def _recent_failures(self, now: float, fields: list[str]) -> Iterator[tuple[str, list[Any]]]:
        """(job id, ``fields`` of its record) of every job that failed within the salvage window."""
        window = self.settings.reconcile_salvage_window_s
        index = self.rt.keys.state_index(JobState.FAILED.value)
        for job_ids in self._chunks(index, (now - window) * 1000, now * 1000):
            with self.rt.redis.pipeline(transaction=False) as pipe:
                for job_id in job_ids:
                    pipe.hmget(self.rt.keys.job(job_id), fields)
                rows = pipe.execute()
            yield from zip(job_ids, rows, strict=True)

    def _salvage_one(self, job_id: str, account: str, task_id: str, now: float) -> None:
        self.counts["salvage_checked"] += 1
        try:
            record = self.rt.upstream(account).record_info(task_id)
        except NotFound:
            self.rt.jobs.update(job_id, expect=JobState.FAILED, fields={"salvage": "not_found"})
            return
        except UpstreamError as error:
            log.info("reconcile: salvage check of job %s failed (%s); next run", job_id, error)
            return
        if not record.state.terminal:
            self.rt.jobs.update(job_id, expect=JobState.FAILED, fields={"salvage_checked_at": now})
            return
        if record.state is not TaskState.SUCCESS:
            self.rt.jobs.update(job_id, expect=JobState.FAILED, fields={"salvage": "upstream_failed"})
            return
        job = self.rt.jobs.get(job_id)
        if job is None or job.state is not JobState.FAILED or job.reason not in SALVAGEABLE_REASONS:
            return
        if apply_terminal(self.rt.jobs, self.rt.quota, job, record) is Applied.DOWNLOADING:
            self._publish_rest(job_id)
            self.counts["salvaged"] += 1
            log.warning("reconcile: job %s timed out but task %s completed later; salvaged", job_id, task_id)

    def waiting_children(self) -> None:
        repair_releases(self.rt, grace_s=self.release_grace_s, now=self._now(), counts=self.counts)

    def finalise_batches(self) -> None:
        for batch_id in self.batches.active():
            status = self.batches.finalise(batch_id, self.files)
            if status is not None and status.done:
                self.counts["batch_finalised"] += 1
                log.info("reconcile: batch %s finished; manifest written to %s", batch_id, status.manifest)

    def lost_messages(self) -> None:
        for job in lost_queued_jobs(self.rt, min_age_s=self.lost_min_age_s, counts=self.counts):
            self._publish_submit(job)
            self.counts["lost_message"] += 1
            log.warning("reconcile: job %s was queued without a submit message; re-published", job.id)

    # -- helpers ------------------------------------------------------------------------------------
    def _jobs_in(self, state: JobState, older_than_s: float) -> list[Job]:
        ids = self.rt.jobs.ids_in_state(state, older_than_s=older_than_s, limit=self.settings.reconcile_limit)
        return [job for job in self.rt.jobs.get_many(ids) if job is not None and job.state is state]

    def _chunks(self, index: str, low: float, high: float) -> Iterator[list[str]]:
        start = 0
        while True:
            ids = cast("list[str]", self.rt.redis.zrangebyscore(index, low, high, start=start, num=_SCAN))
            if not ids:
                return
            yield ids
            start += len(ids)

    def _publish_submit(self, job: Job) -> None:
        message = submit_message(job, keys=self.rt.keys)
        self.rt.redis.lpush(message.queue_key, message.payload)

    def _publish_rest(self, job_id: str) -> None:
        """The rest of the chain of a job just moved on (read again: its steps follow its new state)."""
        job = self.rt.jobs.get(job_id)
        if job is not None:
            rest_of_job(self.app, job).apply_async()

    def _now(self) -> float:
        seconds, micros = cast("tuple[int, int]", self.rt.redis.time())
        return seconds + micros / 1e6


# -- tasks ------------------------------------------------------------------------------------------------


@app.task(name=TASK_RECONCILE, **TIME_LIMITS[TASK_RECONCILE].options())
def reconcile() -> dict[str, int]:
    """Beat, every ``reconcile_interval_s``: one reconciler run."""
    return Reconciler(runtime(), app).run()
