"""The poll planner: per account, when each running task is next asked about (ARCHITECTURE.md, "Polls").

The account's recordInfo budget (``record_info_per_s`` in every rolling second, less the guard) is a
calendar of slots shared by every poll worker on every machine (``core/lua/poll_plan.lua``). A poll
message books its job's next check in the first free slot at or after the time the job may next be
checked — not before the shortest plausible generation time, then not sooner than the interval the
job's age allows (the upstream's suggested back-off for long tasks) — and re-runs when that slot comes.
So the budget goes round the tasks that may have finished, the one checked longest ago first, and a
finished task is seen within about (tasks booked ÷ budget) seconds. The call itself is still counted
by the rolling log (:meth:`~core.quota.QuotaLimiter.take_record_info_call`), so a late or woken
check can never push a second over the limit.

A job's booking is owned by one poll message (its Celery task id, which a re-publish keeps). A second
message for the same job (a reconciler's, a redelivered original) stops, unless the owner missed its
slot by ``takeover_s``: then it is taken as lost and the newcomer carries on. The reconciler's repair of
silent polls still holds: a job nobody checks gets a new message, and its old booking is forgotten, so
the new message books afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import redis

from config.settings import AccountSettings, account_named
from core.keys import Keys
from core.lua_scripts import load_script

#: Another message's booking this overdue means that message was lost; the one running takes over.
TAKEOVER_S = 15.0
#: A booked check may run this early (worker and Redis clocks differ by a few ms).
EARLY_S = 0.05


class TurnCode(StrEnum):
    GO = "go"
    WAIT = "wait"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Turn:
    """What a poll message does now: check (``GO``), re-run after ``wait_s`` (``WAIT``), or stop
    (``DUPLICATE``: another live message owns the job's checks)."""

    code: TurnCode
    wait_s: float = 0.0


class PollPlan:
    """The recordInfo calendars of a pool of accounts."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        accounts: Sequence[AccountSettings],
        *,
        takeover_s: float = TAKEOVER_S,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self._client = client
        self._keys = keys
        self._accounts = {account.name: account for account in accounts}
        self._takeover_ms = round(takeover_s * 1000)
        self._clock = clock
        self._script = load_script(client, "poll_plan")

    def spacing_s(self, account: str) -> float:
        """Seconds between two slots of ``account``'s calendar: its rolling window ÷ calls per window."""
        calls, window_s = self._account(account).record_info_window
        return window_s / calls

    def turn(self, account: str, job_id: str, message_id: str, *, not_before_s: float) -> Turn:
        """A poll message for ``job_id`` runs: may it check now? ``not_before_s`` (epoch seconds, Redis
        clock, as job timestamps are) is the job's first plausible completion, used when it has no
        booking yet."""
        code, wait_ms = self._call(account, "turn", job_id, message_id, round(not_before_s * 1000))
        return Turn(TurnCode(code), wait_ms / 1000)

    def book(self, account: str, job_id: str, message_id: str, *, delay_s: float) -> float:
        """Book the job's next check at least ``delay_s`` from now; the seconds until its slot."""
        _, wait_ms = self._call(account, "book", job_id, message_id, round(delay_s * 1000))
        return wait_ms / 1000

    def forget(self, account: str, job_id: str) -> None:
        """Drop the job's booking and its owner: the next poll message for it books afresh (the
        reconciler re-drives a silent poll; the silent one, should it come back, then stops)."""
        self._account(account)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.zrem(self._keys.poll_plan(account), job_id)
            pipe.hdel(self._keys.poll_owners(account), job_id)
            pipe.execute()

    def _call(self, account: str, mode: str, job_id: str, message_id: str, not_before: int) -> tuple[str, int]:
        spacing_ms = self.spacing_s(account) * 1000
        keys = [self._keys.poll_plan(account), self._keys.poll_owners(account)]
        now = "" if self._clock is None else str(int(self._clock()))
        args: list[str | int] = [
            now,
            mode,
            job_id,
            message_id,
            repr(spacing_ms),
            not_before,
            self._takeover_ms,
            round(EARLY_S * 1000),
        ]
        code, wait_ms = self._script(keys=keys, args=args)
        return (code.decode() if isinstance(code, bytes) else str(code)), int(wait_ms)

    def _account(self, name: str) -> AccountSettings:
        return account_named(self._accounts, name)
