"""The accounts' balances: what each can still pay, as far as ImagineQ knows.

Beat reads every account's ``chat/credit`` every ``credits.balance_interval_s`` (and a submitter after any
402); between readings each charge is added to the account's ``spent`` and each job sent towards it holds its
estimate (``core/lua/quota_dispatch.lua``), so what it can pay is ``credits - spent - holds``: the dispatch
sends no job to an account that cannot pay its estimate. An account without a reading is not limited.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import redis

from core.credits import CENTI
from core.jobs import JobState
from core.jobstore_args import text
from core.keys import Keys
from core.lua_scripts import load_script


@dataclass(frozen=True)
class Balance:
    account: str
    #: The credits the upstream last said the account had, and when (epoch s); None: never read.
    credits: float | None
    read_at: float | None
    #: Credits charged since that reading, and held by jobs on their way there.
    spent: float
    held: float
    low: bool

    @property
    def available(self) -> float | None:
        """What the account can still pay (None: unknown, not limited)."""
        return None if self.credits is None else round(self.credits - self.spent - self.held, 2)

    def to_dict(self) -> dict[str, object]:
        return {
            "account": self.account,
            "credits": self.credits,
            "read_at": self.read_at,
            "spent_since": self.spent,
            "held": self.held,
            "available": self.available,
            "low": self.low,
        }


class Balances:
    def __init__(self, client: redis.Redis, keys: Keys, *, events_max_len: int = 100_000) -> None:
        self._redis = client
        self._keys = keys
        self._events_max_len = events_max_len
        self._record = load_script(client, "balance_record")

    def spent_centi(self, account: str) -> int:
        spent = cast("bytes | str | None", self._redis.hget(self._keys.balance(account), "spent"))
        return int(text(spent or "0"))

    def record(self, account: str, credits: float, *, spent_before: int, low_below: float) -> bool:
        """Keep a reading (``spent_before``: :meth:`spent_centi` just before the upstream was asked); True
        when it posted an ``account.low_balance`` event. Holds of jobs no longer on their way are dropped."""
        self._prune_holds(account)
        posted = self._record(
            keys=[self._keys.balance(account), self._keys.events()],
            args=[repr(float(credits)), spent_before, repr(float(low_below)), account, self._events_max_len],
        )
        return bool(posted)

    def _prune_holds(self, account: str) -> None:
        """A job sent towards the account that went back to the queue, or elsewhere, holds nothing there."""
        holds = self._keys.balance_holds(account)
        members = [text(member) for member in cast("list[bytes | str]", self._redis.zrange(holds, 0, -1))]
        if not members:
            return
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in members:
                pipe.hmget(self._keys.job(job_id), ["state", "account"])
            records = pipe.execute()
        gone = [
            job_id
            for job_id, (state, on) in zip(members, records, strict=True)
            if state is None or text(state) != JobState.SUBMITTING.value or on is None or text(on) != account
        ]
        if gone:
            self._redis.zrem(holds, *gone)

    def read(self, accounts: Iterable[str]) -> list[Balance]:
        names: Sequence[str] = list(accounts)
        with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(self._keys.balance(name), ["credits", "at", "spent", "low"])
                pipe.zrange(self._keys.balance_holds(name), 0, -1, withscores=True)
            replies = pipe.execute()
        out = []
        for i, name in enumerate(names):
            credits, at, spent, low = replies[2 * i]
            held = sum(score for _, score in replies[2 * i + 1])
            out.append(
                Balance(
                    account=name,
                    credits=None if credits is None else float(text(credits)),
                    read_at=None if at is None else int(text(at)) / 1000,
                    spent=int(text(spent or "0")) / CENTI,
                    held=held / CENTI,
                    low=low is not None,
                )
            )
        return out
