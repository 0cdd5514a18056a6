"""Waiting in a submit for a quota slot, and resuming paused accounts once their credits are back."""

from __future__ import annotations

import logging
import time

from core.errors import (
    UpstreamError,
)
from workers.runtime import Runtime

log = logging.getLogger("imagineq.tasks")


def wait_for_slot(rt: Runtime, job_id: str) -> str | None:
    """Wait in-process (bounded well below the visibility timeout) for a quota slot on any account.

    Full in-progress sets are waited on by blocking on their wake lists, so the first slot released
    anywhere is taken again within a round trip; other waits (the creation window, a cooldown, a pause)
    sleep for the limiter's hint."""
    if not rt.settings.quota_enforce:
        return rt.settings.accounts[0].name  # benchmark baseline: Celery rate_limit alone
    deadline = time.monotonic() + rt.settings.quota_wait_max_s
    while True:
        acquired = rt.quota.acquire_slot(job_id)
        if acquired.account is not None:
            return acquired.account
        if acquired.reason == "paused":
            resume_paused_accounts(rt)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        wait_s = max(0.01, min(acquired.wait_s, remaining))
        if acquired.reason == "in_progress":
            rt.quota.wait_for_release(wait_s)  # a released slot wakes us at once
        else:
            time.sleep(wait_s)


def resume_paused_accounts(rt: Runtime) -> None:
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
