"""What jobs cost: each job's estimate, the ledger of reserved and charged credits, and the budgets.

A job's **estimate** is its model's price rule (``core.catalog``; the prices are settings, ``models.<name>``)
over its fields. The **ledger** lives in Redis, in centi-credits (whole numbers: sums stay exact), and moves
in the same Lua step as the job it belongs to (``core/lua/ledger.lua``): *reserved* when the job is written
(``job_create.lua``, where the **budgets** are checked, so two requests racing for a budget's last credits
cannot both get them), *charged* when its upstream task exists, *released* when it ends without one, and
settled on the upstream's own figure when its record reports one (``job_transition.lua``). A job's credits
count on the UTC day and month it was enqueued (``lday``), so every later move lands beside its reservation.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis

from config.settings import ModelSettings, Settings
from core.catalog import MODELS
from core.catalog.spec import PriceRule
from core.errors import OverBudget
from core.jobs import Job
from core.jobstore_args import text
from core.keys import Keys
from core.lua_scripts import load_script

#: Ledger amounts are kept in hundredths of a credit.
CENTI: Final = 100
#: The principal of jobs enqueued without one (the Python API, the CLI, batch files) in the ledger.
NO_PRINCIPAL: Final = "-"
#: The budgets, in the order ledger.lua checks them.
BUDGETS: Final = ("principal_day", "principal_month", "batch", "global_day")


def to_centi(credits: float) -> int:
    return round(credits * CENTI)


def from_centi(centi: int | float | str | bytes) -> float:
    value = centi.decode() if isinstance(centi, bytes) else centi
    return round(float(value) / CENTI, 2)


def utc_day(at: float | None = None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if at is None else at))


def day_start(day: str) -> int:
    """When the UTC day ``YYYY-MM-DD`` starts, in epoch seconds."""
    return calendar.timegm(time.strptime(day, "%Y-%m-%d"))


def credits_text(amount: float) -> str:
    """An amount as a record keeps it: at most two decimals, no trailing zeros (``14.4``, ``45``)."""
    return f"{amount:.2f}".rstrip("0").rstrip(".")


def ledger_keys(keys: Keys, day: str, batch_id: str | None) -> list[str]:
    """The keys a ledger move of a job enqueued on ``day`` touches: day, month, total, batch (the day's
    key stands in for a job of no batch: never touched then)."""
    return [
        keys.ledger_day(day),
        keys.ledger_month(day[:7]),
        keys.ledger_total(),
        keys.ledger_batch(batch_id) if batch_id else keys.ledger_day(day),
    ]


@dataclass(frozen=True)
class Budgets:
    """The limits (credits; None: none) a principal's new jobs are checked against."""

    principal_day: float | None = None
    principal_month: float | None = None
    global_day: float | None = None

    def limits(self, batch: float | None) -> list[str]:
        """ledger.lua's limit arguments, in :data:`BUDGETS` order (centi-credits, '' for none)."""
        values = (self.principal_day, self.principal_month, batch, self.global_day)
        return ["" if value is None else str(to_centi(value)) for value in values]


class CreditPolicy:
    """The deployment's prices, budgets and ledger settings (``credits``, ``models``, the principals')."""

    def __init__(self, settings: Settings) -> None:
        credits = settings.credits
        self.warn = credits.warn_pct / 100
        self.ttl_s = credits.ledger_days * 86400
        self._budgets = {
            p.name: Budgets(
                p.budget_day or credits.principal_day, p.budget_month or credits.principal_month, credits.daily_cap
            )
            for p in settings.ingress_principals
        }
        self._default = Budgets(credits.principal_day, credits.principal_month, credits.daily_cap)
        # Each model's rule with the deployment's prices, resolved once (estimate runs for every new job).
        self._rules = {name: _priced(spec.price, settings.models.get(name)) for name, spec in MODELS.items()}

    def estimate(self, model: str, values: dict[str, object], parent_output: str | None = None) -> float:
        """Credits a job of ``model`` with ``values`` (its prompt and fields) is estimated to cost: the
        model's price rule with the deployment's prices (``models.<name>.credits_per_task`` and
        ``credits_per_second``) where set."""
        return self._rules[model].estimate(values, parent_output)

    def budgets(self, owner: str | None) -> Budgets:
        if owner is None:
            return self._default
        return self._budgets.get(owner, self._default)


def _priced(rule: PriceRule, chosen: ModelSettings | None) -> PriceRule:
    """``rule`` with the prices a deployment sets for its model (a per-task price then replaces the
    parent-dependent ones)."""
    if chosen is None or (chosen.credits_per_task is None and chosen.credits_per_second is None):
        return rule
    per_task = chosen.credits_per_task
    return PriceRule(
        per_task=rule.per_task if per_task is None else per_task,
        per_second=rule.per_second if chosen.credits_per_second is None else chosen.credits_per_second,
        seconds_field=rule.seconds_field,
        per_parent={} if per_task is not None else rule.per_parent,
    )


def over_budget_of(reply: Sequence[Any], estimate: float) -> OverBudget:
    """A ledger script's refusal ``{2, budget, limit, charged, reserved}`` (centi-credits) as the error."""
    budget, limit, charged, reserved = reply[1:5]
    return OverBudget(text(budget), from_centi(limit), from_centi(charged), from_centi(reserved), estimate)


def reserve_attempt(client: redis.Redis, keys: Keys, policy: CreditPolicy, job: Job, *, events_max_len: int) -> None:
    """Reserve a failed job's next attempt (a resubmit) in the ledger under its budgets, today, before it is
    queued again (``ledger_reattempt.lua``); :class:`OverBudget` (nothing written) when a budget has no room,
    ValueError when the job is no longer failed."""
    estimate = policy.estimate(job.model, job.values, job.parent_output)
    day = utc_day()
    args = [
        str(to_centi(estimate)),
        day,
        str(policy.ttl_s),
        *policy.budgets(job.owner).limits(None),
        repr(policy.warn),
        str(events_max_len),
    ]
    script = load_script(client, "ledger_reattempt")
    reply = script([keys.job(job.id), *ledger_keys(keys, day, job.batch_id), keys.events()], args)
    if int(reply[0]) == 0:
        raise ValueError(f"job {job.id} is no longer failed; look again")
    if int(reply[0]) == 2:
        raise over_budget_of(reply, estimate)
