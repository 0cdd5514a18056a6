"""Queued jobs whose submit message was lost (a producer that died between its records and their
messages, a Redis failure, a hand edit), found by comparing the queued jobs with the submit messages
queued and in flight (:mod:`workers.broker_messages`)."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Final, cast

from config.celery import PRIORITY_STEPS, SUBMIT_QUEUE
from core.jobs import Job, JobState
from workers.broker_messages import held_submits, queued_submits
from workers.runtime import Runtime

log = logging.getLogger("imagineq.reconcile")

#: Lost-message scans read at most this many broker messages.
LOST_SCAN_MAX_MESSAGES: Final = 20_000


def lost_queued_jobs(rt: Runtime, *, min_age_s: float, counts: Counter[str]) -> list[Job]:
    """Queued jobs (queued for ``min_age_s`` at least) missing from two scans in a row: they need a new
    submit message. Counts ``lost_message_suspected`` on a shortfall."""
    queued = int(cast(int, rt.redis.zcard(rt.keys.state_index(JobState.QUEUED.value))))
    if not queued:
        rt.redis.delete(rt.keys.reconcile_suspects())
        return []
    lists = [rt.keys.broker_queue(SUBMIT_QUEUE, step) for step in PRIORITY_STEPS]
    # A submit runs, waits and re-publishes itself well within reconcile_submitting_stale_s: a message
    # delivered before that belongs to a dead worker, and its job counts as having no message.
    live_since = _server_now(rt) - rt.settings.reconcile_submitting_stale_s
    with rt.redis.pipeline(transaction=False) as pipe:
        for key in lists:
            pipe.llen(key)
        lengths = pipe.execute()
    # Only submit messages count: poll and store messages held by the same (dead or live) workers
    # would otherwise make up for a lost submit message, and it would never be suspected.
    held = list(held_submits(rt.redis, rt.keys, live_since))
    messages = sum(int(n) for n in lengths) + len(held)
    if queued <= messages:
        rt.redis.delete(rt.keys.reconcile_suspects())
        return []
    counts["lost_message_suspected"] += queued - messages
    log.warning("reconcile: %d queued jobs but %d submit messages queued or in flight", queued, messages)
    if messages > LOST_SCAN_MAX_MESSAGES:
        log.warning("reconcile: backlog too big to scan for lost messages (%d)", messages)
        return []
    found = set(queued_submits(rt.redis, lists)) | set(held)
    missing = [
        job_id
        for job_id in rt.jobs.ids_in_state(JobState.QUEUED, older_than_s=min_age_s, limit=rt.settings.reconcile_limit)
        if job_id not in found
    ]
    suspects_key = rt.keys.reconcile_suspects()
    before = cast("set[str]", rt.redis.smembers(suspects_key))
    lost = [
        job
        for job in rt.jobs.get_many([job_id for job_id in missing if job_id in before])
        if job is not None and job.state is JobState.QUEUED
    ]
    with rt.redis.pipeline(transaction=True) as pipe:
        pipe.delete(suspects_key)
        fresh = [job_id for job_id in missing if job_id not in before]
        if fresh:
            pipe.sadd(suspects_key, *fresh)
            pipe.expire(suspects_key, int(max(600.0, 10 * rt.settings.reconcile_interval_s)))
        pipe.execute()
    return lost


def _server_now(rt: Runtime) -> float:
    seconds, micros = cast("tuple[int, int]", rt.redis.time())
    return seconds + micros / 1e6
