"""What fair share looks like now, per principal: jobs waiting and the oldest of them, slots held, the last
hour's creations against the principal's weight (read for ``imagineq status``, the dashboard and
``/metrics``; the choice itself is made in ``core/lua/quota_dispatch.lua``).

Every read is bounded by the number of principals, accounts and pools, never by the depth of a backlog:
waiting jobs are counted by lex range in one sorted set, slots by the lease owners of each (account,
pool), creations by the last hour's log (at most the accounts' hourly creations).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from core.keys import Keys
from core.messages import OPERATOR

#: The window the share of creations is measured over.
SHARE_WINDOW_S = 3600.0


@dataclass(frozen=True)
class PrincipalShare:
    principal: str
    weight: float
    #: Jobs ready and waiting for a slot (every pool).
    queued: int
    #: When the oldest of them was created (epoch s), or None.
    oldest_waiting_at: float | None
    #: In-progress slots its jobs hold (every account and pool).
    in_progress: int
    #: Creations in the last hour, and their share of everyone's.
    creations: int
    share: float
    #: What its weight entitles it to among the principals with work (queued or created lately).
    fair_share: float


def read_shares(
    client: redis.Redis,
    keys: Keys,
    weights: Mapping[str, float],
    slots: Sequence[tuple[str, str]],
    *,
    now_s: float | None = None,
) -> list[PrincipalShare]:
    """Each principal's figures (``weights``: name -> weight; the operator's own jobs are ``@operator``);
    ``slots``: every (account, pool)."""
    names = list(dict.fromkeys([*weights, OPERATOR]))
    now = time.time() if now_s is None else now_s
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.zlexcount(keys.waiting(), f"[{name}|", f"({name}}}")  # type: ignore[no-untyped-call]
            pipe.zrangebylex(keys.waiting(), f"[{name}|", f"({name}}}", start=0, num=1)
        for account, pool in slots:
            pipe.hvals(keys.lease_owners(account, pool))
        pipe.zrangebyscore(keys.creation_log(), (now - SHARE_WINDOW_S) * 1000, "+inf")
        replies: list[Any] = pipe.execute()
    waiting = replies[: 2 * len(names)]
    holders = Counter(owner for owners in replies[2 * len(names) : -1] for owner in cast("list[str]", owners))
    created = Counter(str(member).rsplit(":", 1)[-1] for member in cast("list[str]", replies[-1]))
    total = sum(created.values())
    active = [name for index, name in enumerate(names) if int(waiting[2 * index]) or created[name]]
    active_weight = sum(weights.get(name, 1.0) for name in active)
    out = []
    for index, name in enumerate(names):
        first = cast("list[str]", waiting[2 * index + 1])
        weight = weights.get(name, 1.0)
        out.append(
            PrincipalShare(
                principal=name,
                weight=weight,
                queued=int(waiting[2 * index]),
                oldest_waiting_at=int(str(first[0]).split("|")[1]) / 1000 if first else None,
                in_progress=holders[name],
                creations=created[name],
                share=created[name] / total if total else 0.0,
                fair_share=weight / active_weight if name in active and active_weight else 0.0,
            )
        )
    return out
