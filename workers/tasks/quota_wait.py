"""Waiting in a submit for a job that may go, and resuming paused accounts (or reading the balances again) once
their credits are back."""

from __future__ import annotations

import logging
import time

from core.quota_outcomes import Dispatched
from workers.runtime import Runtime
from workers.tasks.balances import read_balance

log = logging.getLogger("imagineq.tasks")


def next_dispatch(rt: Runtime, *, wait: bool = True) -> Dispatched:
    """The next job to submit with its slot (see ``QuotaLimiter.dispatch``), waiting in-process (bounded
    well below the visibility timeout) while jobs are ready but none may go yet. ``empty`` when no job is
    ready; with no job id and a reason, the wait ran out (the caller re-publishes its ticket), or (``wait``
    False) no ready job may go at once.

    Full in-progress sets are waited on by blocking on the dispatch wake list, so the first slot released
    (or job made ready) anywhere is looked at within a round trip; other waits (a creation window, the
    createTask rate, a cooldown, a pause) sleep for the limiter's hint, also cut short by a wake."""
    if not rt.settings.quota_enforce:
        return rt.quota.take_unlimited(rt.settings.accounts[0].name)  # benchmark baseline: rate_limit alone
    if not wait:
        return rt.quota.dispatch()
    deadline = time.monotonic() + rt.settings.quota_wait_max_s
    while True:
        dispatched = rt.quota.dispatch()
        if dispatched.job_id is not None or dispatched.empty:
            return dispatched
        if dispatched.reason == "paused":
            resume_paused_accounts(rt)
        elif dispatched.reason == "credits":
            refresh_short_balances(rt)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return dispatched
        rt.quota.wait_for_release(max(0.01, min(dispatched.wait_s, remaining)))


def resume_paused_accounts(rt: Runtime) -> None:
    """A paused account resumes by itself once a credits check succeeds (one checker at a time)."""
    for account in rt.settings.accounts:
        if rt.quota.paused(account.name) is None:
            continue
        gate = rt.keys.pause_check(account.name)
        if not rt.redis.set(gate, "1", nx=True, px=int(rt.settings.pause_check_interval_s * 1000)):
            continue
        # The reading is kept too: the dispatch then sends the account only the jobs it can pay for.
        credits = read_balance(rt, account)
        if credits is None:
            log.info("account %s still paused: credits check failed", account.name)
            continue
        if credits > 0:
            rt.quota.resume(account.name)
            log.warning("account %s resumed: %g credits available", account.name, credits)


def refresh_short_balances(rt: Runtime) -> None:
    """Jobs wait because no account they may use can pay them, as far as the last readings say: read the
    balances again (one reader per account every ``pause_check_interval_s``), so a refill, or a reading
    grown stale with beat away, holds no job back for longer than that."""
    for account in rt.settings.accounts:
        gate = rt.keys.balance_check(account.name)
        if rt.redis.set(gate, "1", nx=True, px=int(rt.settings.pause_check_interval_s * 1000)):
            read_balance(rt, account)
