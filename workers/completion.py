"""Apply a terminal upstream record to a job: the one state move that ends an upstream task.

Every record applied here was read from the upstream itself (recordInfo, with our key): by a poll, by
a poll a callback woke, or by the reconciler's salvage. A callback's body is never applied: its
signature covers only ``taskId.timestamp``, so it proves who sent it, not what it says.

A callback that arrives while the job is still ``submitting`` (createTask's answer not yet recorded)
leaves a *wake marker* (``keys.early_callback``: the task id it named) with a TTL. Whoever takes the
marker first (``GETDEL``) acts on it: submit right after its ``generating`` move (its chain's poll then
asks recordInfo at once), or the web when it sees that move already made.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any, Final, cast

import redis

from config.settings import ConfigError
from core.jobs import Job, JobState, encode_json
from core.jobstore import JobStore
from core.keys import Keys
from core.quota import QuotaLimiter
from workers.upstream import TaskRecord, TaskState

log = logging.getLogger("imagineq.completion")

#: Failure reasons after which a completion is still worth storing (the task did finish upstream).
SALVAGEABLE_REASONS: Final = frozenset({"timed_out", "outcome_unknown"})


class Applied(StrEnum):
    #: Success: the job moved to ``downloading``; the caller makes sure ``store`` runs.
    DOWNLOADING = "downloading"
    #: Failure: the job moved to ``failed`` (``generation_failed``).
    FAILED = "failed"
    #: Nothing to do: another actor moved the job first, or the record is not about its current task.
    NOTHING = "nothing"


def apply_terminal(jobs: JobStore, quota: QuotaLimiter, job: Job, record: TaskRecord) -> Applied:
    """Move ``job`` according to the terminal ``record`` and free its in-progress lease.

    Acts on a ``generating`` job whose ``task_id`` is the record's, and salvages a success for a job that
    failed ``timed_out`` or ``outcome_unknown`` (the task finished after all; ``failed → downloading``).
    """
    if not record.state.terminal:
        return Applied.NOTHING
    salvage = job.state is JobState.FAILED and job.reason in SALVAGEABLE_REASONS
    if job.state is not JobState.GENERATING and not salvage:
        return Applied.NOTHING
    if job.task_id is not None and job.task_id != record.task_id:
        log.info("job %s: record for task %s ignored (job follows %s)", job.id, record.task_id, job.task_id)
        return Applied.NOTHING
    if job.task_id is None and not salvage:
        return Applied.NOTHING
    success = record.state is TaskState.SUCCESS and bool(record.result_urls)
    if salvage and not success:
        return Applied.NOTHING  # a late failure changes nothing for an already failed job
    if success:
        urls = list(record.result_urls)
        most = job.spec.max_outputs
        if len(urls) > most:
            log.warning(
                "job %s: task %s returned %d results; %s makes at most %d",
                job.id,
                record.task_id,
                len(urls),
                job.model,
                most,
            )
            urls = urls[:most]
        fields: dict[str, Any] = {
            "result_url": urls[0],
            "result_urls": encode_json(urls),
            "completed_ms": record.complete_time_ms,
            "task_id": record.task_id,
        }
        if salvage:
            fields.update(reason=None, error=None)
        moved = jobs.transition(
            job.id, JobState.DOWNLOADING, expect=job.state, fields=fields, upstream_credits=record.consumed_credits
        )
        outcome = Applied.DOWNLOADING
    else:
        if record.state is TaskState.SUCCESS:
            fail_fields = {"reason": "generation_failed", "error": "success without a result URL"}
        else:
            fail_fields = {
                "reason": "generation_failed",
                "fail_code": record.fail_code,
                "fail_msg": record.fail_msg,
                "error": f"upstream generation failed: {record.fail_code} {record.fail_msg}".strip(),
            }
        moved = jobs.transition(
            job.id,
            JobState.FAILED,
            expect=JobState.GENERATING,
            fields=fail_fields,
            upstream_credits=record.consumed_credits,
        )
        outcome = Applied.FAILED
    if job.account:
        _release(quota, job.account, job.id, job.pool)
    return outcome if moved else Applied.NOTHING


def _release(quota: QuotaLimiter, account: str, job_id: str, pool: str) -> None:
    try:
        quota.release(account, job_id, pool=pool)
    except ConfigError:
        # This process does not know the account (misconfigured web): the lease expires by itself.
        log.error("job %s: cannot release the lease on unknown account %r", job_id, account)


# -- callbacks that beat submit ---------------------------------------------------------------------------


def stash_wake(client: redis.Redis, keys: Keys, job_id: str, task_id: str, ttl_s: int) -> None:
    """Note that the upstream called back about ``task_id`` before submit recorded it."""
    client.set(keys.early_callback(job_id), task_id, ex=ttl_s)


def take_wake(client: redis.Redis, keys: Keys, job_id: str) -> str | None:
    """The task id a callback named while the job was submitting, removed so that one taker acts on it."""
    raw = cast("str | bytes | None", client.getdel(keys.early_callback(job_id)))
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else raw
