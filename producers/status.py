"""What ``imagineq status`` shows, gathered from Redis (and each account's credits from the upstream).

One :func:`gather` call reads, per account, the quota state (:meth:`QuotaLimiter.snapshot`: creations in
the rolling window, in-progress leases, cooldown, pause) and asks the upstream for the credits left
(``credits()`` with a short timeout, all accounts at once; any error gives ``credits=None`` and the
reason, never an exception); then the Celery queue depths per priority list and the messages workers hold
(the ``unacked`` hash, split by queue), jobs by state, the oldest queued job (the queued state index's
lowest score) and the newest failures with their reasons.

Everything here is safe to print: no secret is read into a :class:`Status` (account names, never keys;
upstream error texts are redacted by the client), and :func:`producers.status_cli` redacts the rendered
output once more.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis

from config.celery import QUEUES
from config.settings import AccountSettings, Settings, redact_url
from core.balances import Balance, Balances
from core.catalog import DEFAULT_MODEL, MODELS
from core.clients import Clients
from core.errors import UpstreamError
from core.fair_share import PrincipalShare, read_shares
from core.jobs import Job, JobState
from core.quota import QuotaLimiter
from workers.queues import held_by_queue, read_depths
from workers.upstream import UpstreamClient

#: Upstream timeout (connect and read) of the credits check: status must answer even when it does not.
CREDITS_TIMEOUT_S = 3.0
#: How many of the newest failures are shown.
FAILURES_SHOWN = 10
#: Failure messages are cut to this length.
ERROR_CHARS = 300
#: Above this many held messages the ``unacked`` hash is only counted, not split by queue.
UNACKED_SPLIT_MAX = 10_000
FAILURE_STATES = (JobState.FAILED, JobState.EXPIRED)


@dataclass(frozen=True)
class PoolStatus:
    """One model pool of an account other than text-to-video's (whose figures are the account's own)."""

    pool: str
    creations_in_window: int
    creations_limit: int
    in_progress: int
    in_progress_limit: int


@dataclass(frozen=True)
class AccountStatus:
    account: str
    creations_in_window: int
    creations_limit: int
    window_s: float
    in_progress: int
    in_progress_limit: int
    cooldown_s: float
    paused: str | None
    credits: float | None
    #: Why ``credits`` is unknown (None when it is known, or was not asked).
    credits_error: str | None = None
    #: The balance as beat last read it, with what was charged and held since (None: never read).
    balance: Balance | None = None
    #: The other pools in use now (a task in progress or a creation in the window).
    pools: tuple[PoolStatus, ...] = ()


@dataclass(frozen=True)
class QueueStatus:
    queue: str
    #: Waiting messages per priority list (0 = interactive ... 9 = batch).
    waiting: dict[int, int]
    #: Messages workers hold: reserved, running, or waiting for a countdown (``None``: not split).
    held: int | None

    @property
    def waiting_total(self) -> int:
        return sum(self.waiting.values())


@dataclass(frozen=True)
class Failure:
    job_id: str
    state: str
    at: float
    reason: str | None
    error: str | None
    account: str | None
    task_id: str | None


@dataclass(frozen=True)
class Status:
    #: Redis server time (unix s) when the status was read.
    at: float
    redis: str
    prefix: str
    accounts: list[AccountStatus]
    queues: list[QueueStatus]
    #: Messages held by workers, all queues together.
    held_total: int
    jobs: dict[str, int]
    oldest_queued_job: str | None
    oldest_queued_age_s: float | None
    failures: list[Failure] = field(default_factory=list)
    #: Fair share per principal (the operator's own jobs as ``@operator``); principals with nothing to
    #: show are left out.
    principals: list[PrincipalShare] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for queue, raw in zip(data["queues"], self.queues, strict=True):
            queue["waiting"] = {str(step): count for step, count in raw.waiting.items()}
            queue["waiting_total"] = raw.waiting_total
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


class StatusReader:
    """Reads a :class:`Status` from one deployment; reusable (``--watch`` keeps one)."""

    def __init__(self, settings: Settings, *, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self._own_client = client is None
        clients = Clients.build(settings, client)
        self.redis, self.keys, self.jobs = clients.redis, clients.keys, clients.jobs
        self.quota = QuotaLimiter.for_settings(self.redis, self.keys, settings) if settings.accounts else None
        self.redis_location = redact_url(settings.redis_url)

    def close(self) -> None:
        if self._own_client:
            self.redis.close()

    def gather(
        self,
        *,
        credits: bool = True,
        credits_timeout_s: float = CREDITS_TIMEOUT_S,
        failures: int = FAILURES_SHOWN,
        known_credits: dict[str, tuple[float | None, str | None]] | None = None,
    ) -> Status:
        """Read everything. ``credits=False`` skips the upstream (``credits`` None); ``known_credits``
        (account → (credits, error)) reuses earlier answers instead of asking again."""
        seconds, micros = cast("tuple[int, int]", self.redis.time())
        now = seconds + micros / 1e6
        oldest_job, oldest_age_s = self._oldest_queued(now)
        queues, held_total = self._queues()
        return Status(
            at=now,
            redis=self.redis_location,
            prefix=self.settings.redis_prefix,
            accounts=self._accounts(credits, credits_timeout_s, known_credits or {}),
            queues=queues,
            held_total=held_total,
            jobs={state.value: count for state, count in self.jobs.count_by_state().items()},
            oldest_queued_job=oldest_job,
            oldest_queued_age_s=oldest_age_s,
            failures=self._failures(failures),
            principals=self.principal_shares(now),
        )

    def principal_shares(self, now: float) -> list[PrincipalShare]:
        """Every principal with work queued, in progress or created in the last hour."""
        weights = {principal.name: principal.weight for principal in self.settings.principals()}
        slots = [(account.name, pool) for account in self.settings.accounts for pool in MODELS]
        shares = read_shares(self.redis, self.keys, weights, slots, now_s=now)
        return [share for share in shares if share.queued or share.in_progress or share.creations]

    # -- accounts -------------------------------------------------------------------------------------
    def _accounts(
        self, ask: bool, timeout_s: float, known: dict[str, tuple[float | None, str | None]]
    ) -> list[AccountStatus]:
        if self.quota is None:
            return []
        to_ask = [a for a in self.settings.accounts if ask and a.name not in known]
        answers = dict(known)
        if to_ask:
            with ThreadPoolExecutor(max_workers=min(8, len(to_ask))) as pool:
                results = pool.map(lambda account: self.credits_of(account, timeout_s), to_ask)
                answers.update(zip((a.name for a in to_ask), results, strict=True))
        out = []
        others: dict[str, list[PoolStatus]] = {}
        every_pool = self.quota.snapshot(pool=None)  # one round trip: the default pool's rows are in it
        for pool_quota in every_pool:
            if pool_quota.pool != DEFAULT_MODEL and (pool_quota.in_progress or pool_quota.creations_in_window):
                others.setdefault(pool_quota.account, []).append(
                    PoolStatus(
                        pool=pool_quota.pool,
                        creations_in_window=pool_quota.creations_in_window,
                        creations_limit=pool_quota.creations_limit,
                        in_progress=pool_quota.in_progress,
                        in_progress_limit=pool_quota.in_progress_limit,
                    )
                )
        balances = {b.account: b for b in Balances(self.redis, self.keys).read(a.name for a in self.settings.accounts)}
        for quota in (row for row in every_pool if row.pool == DEFAULT_MODEL):
            account = self.settings.account(quota.account)
            credits, error = answers.get(quota.account, (None, None))
            out.append(
                AccountStatus(
                    account=quota.account,
                    creations_in_window=quota.creations_in_window,
                    creations_limit=quota.creations_limit,
                    window_s=account.creation_window_s,
                    in_progress=quota.in_progress,
                    in_progress_limit=quota.in_progress_limit,
                    cooldown_s=quota.cooldown_s,
                    paused=quota.paused,
                    credits=credits,
                    credits_error=error,
                    balance=balances.get(quota.account),
                    pools=tuple(others.get(quota.account, ())),
                )
            )
        return out

    def credits_of(self, account: AccountSettings, timeout_s: float) -> tuple[float | None, str | None]:
        """The account's credits from the upstream, or None and why (never an exception)."""
        http = self.settings.http.model_copy(update={"connect_timeout_s": timeout_s, "read_timeout_s": timeout_s})
        try:
            with UpstreamClient(account, http) as client:
                return client.credits(), None
        except UpstreamError as error:  # the client's message never holds the key
            return None, str(error)[:ERROR_CHARS]

    # -- queues ---------------------------------------------------------------------------------------
    def _queues(self) -> tuple[list[QueueStatus], int]:
        depths = read_depths(self.redis, self.keys, QUEUES)
        held = held_by_queue(self.redis, self.keys) if depths.held <= UNACKED_SPLIT_MAX else None
        queues = [
            QueueStatus(queue, depths.waiting[queue], None if held is None else held.get(queue, 0)) for queue in QUEUES
        ]
        return queues, depths.held

    # -- jobs -----------------------------------------------------------------------------------------
    def _oldest_queued(self, now: float) -> tuple[str | None, float | None]:
        index = self.keys.state_index(JobState.QUEUED.value)
        oldest = cast("list[tuple[str, float]]", self.redis.zrange(index, 0, 0, withscores=True))
        if not oldest:
            return None, None
        job_id, score_ms = oldest[0]
        return job_id, max(0.0, now - score_ms / 1000)

    def _failures(self, limit: int) -> list[Failure]:
        """The newest ``limit`` failed or expired jobs (state index: score = ms the job entered it)."""
        if limit <= 0:
            return []
        entries: list[tuple[str, float, JobState]] = []
        for state in FAILURE_STATES:
            index = self.keys.state_index(state.value)
            rows = cast("list[tuple[str, float]]", self.redis.zrevrange(index, 0, limit - 1, withscores=True))
            entries += [(job_id, score, state) for job_id, score in rows]
        entries.sort(key=lambda entry: entry[1], reverse=True)
        entries = entries[:limit]
        jobs = self.jobs.get_many([job_id for job_id, _, _ in entries])
        return [_failure(job_id, score, state, job) for (job_id, score, state), job in zip(entries, jobs, strict=True)]


def _failure(job_id: str, score_ms: float, state: JobState, job: Job | None) -> Failure:
    if job is None:  # expired between the two reads
        return Failure(job_id, state.value, score_ms / 1000, None, "record gone", None, None)
    error = job.error[:ERROR_CHARS] if job.error else None
    return Failure(job_id, job.state.value, score_ms / 1000, job.reason, error, job.account, job.task_id)


def gather(settings: Settings, **options: Any) -> Status:
    """One :class:`Status` (see :meth:`StatusReader.gather` for ``options``)."""
    reader = StatusReader(settings)
    try:
        return reader.gather(**options)
    finally:
        reader.close()
