"""What the quota answers: a dispatched job, an acquired slot or how long to wait, and an account's
state in a pool (for status and metrics)."""

from __future__ import annotations

from dataclasses import dataclass

from core.catalog import DEFAULT_MODEL


@dataclass(frozen=True)
class Dispatched:
    """The outcome of :meth:`QuotaLimiter.dispatch`: ``job_id`` (of ``pool``) holds a slot on ``account``;
    or, with ``job_id`` None, ``wait_s`` until a ready job may go (``reason`` as in :class:`Acquired`),
    or ``empty``: no job is ready at all."""

    job_id: str | None
    pool: str = DEFAULT_MODEL
    account: str | None = None
    rank: str = ""
    wait_s: float = 0.0
    reason: str = ""

    @property
    def empty(self) -> bool:
        return self.job_id is None and self.reason == ""


@dataclass(frozen=True)
class Acquired:
    """The outcome of :meth:`QuotaLimiter.acquire_slot`.

    With ``account`` set, the job holds a slot (creation entry + lease) on it. Otherwise ``wait_s`` (> 0)
    is how long until the account that frees soonest may have room, and ``reason`` says what blocks it:
    ``in_progress``, ``creations``, ``requests`` (the account's createTask rate), ``cooldown``, ``paused``,
    or ``replicas`` (no replica acknowledged
    the slot in time: a failover now could forget it, so the job does not go to the upstream yet).
    """

    account: str | None
    wait_s: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class AccountQuota:
    """One account's quota state in one pool at an instant (status and metrics)."""

    account: str
    pool: str
    creations_in_window: int
    creations_limit: int
    in_progress: int
    in_progress_limit: int
    cooldown_s: float
    paused: str | None
