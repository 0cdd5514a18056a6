"""Reading the accounts' balances (``core.balances``): beat every ``credits.balance_interval_s``, and a
submitter whose account was paused by a 402."""

from __future__ import annotations

import logging

from config.celery import TASK_BALANCES, TIME_LIMITS
from config.settings import AccountSettings
from core.balances import Balances
from core.errors import UpstreamError
from workers.celery import app
from workers.runtime import Runtime
from workers.tasks.process import runtime

log = logging.getLogger("imagineq.credits")


def read_balance(rt: Runtime, account: AccountSettings) -> float | None:
    """Ask the upstream for the account's balance and keep it; None when it did not answer."""
    balances = Balances(rt.redis, rt.keys, events_max_len=rt.settings.events_max_len)
    before = balances.spent_centi(account.name)
    try:
        credits = rt.upstream(account.name).credits()
    except UpstreamError as error:
        log.info("account %s: balance not read (%s)", account.name, error)
        return None
    low_below = account.low_balance if account.low_balance is not None else rt.settings.credits.low_balance
    if balances.record(account.name, credits, spent_before=before, low_below=low_below):
        log.warning("account %s is low on credits: %g left (below %g)", account.name, credits, low_below)
    return credits


@app.task(name=TASK_BALANCES, **TIME_LIMITS[TASK_BALANCES].options())
def read_balances() -> dict[str, float | None]:
    """Beat: every account's balance, read and kept (a paused account whose credits are back resumes)."""
    rt = runtime()
    out: dict[str, float | None] = {}
    for account in rt.settings.accounts:
        out[account.name] = credits = read_balance(rt, account)
        if credits is not None and credits > 0 and rt.quota.paused(account.name) == "no_credits":
            rt.quota.resume(account.name)
            log.warning("account %s resumed: %g credits available", account.name, credits)
    return out
