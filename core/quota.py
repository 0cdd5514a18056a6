"""Upstream quotas per account and per model pool, enforced in Redis for every worker at once
(ARCHITECTURE.md, "Quotas").

Each (account, pool) has, under :class:`~core.keys.Keys` (a pool is a model of the catalog, whose caps
``core.catalog.pool_caps`` gives):

- a sliding creation log (sorted set, one entry per createTask, score = ms), capped by the pool's
  creations over ``creation_window_s`` — one ``ZREMRANGEBYSCORE`` + ``ZCARD``, however long the window
  (no per-second keys);
- a lease set (member = job id, score = expiry ms), capped by the pool's in-progress cap; a slot is taken
  *before* createTask together with its creation entry, renewed by polls and released at a terminal
  state, so a dead worker leaks a slot for at most one lease TTL.

Each account has, for all its pools together: a cooldown (upstream 429/455), a pause (402/433/...), a
rolling log of createTask requests (``create_requests_per_window``, when set), one of recordInfo calls, and
its balance with the estimates of the jobs sent there (:mod:`core.balances`): a job goes only where it can
be paid for.

Submitters take work with :meth:`QuotaLimiter.dispatch`: among the jobs the pools' ready sets hold, the
first by rank whose pool has room goes, on the account with the most headroom there, so a full pool never
holds another pool's jobs back. A submitter with nothing to take blocks on one wake list (``BLPOP``), which
every freed slot and every newly ready job pushes to.

Every decision is one Lua script (``core/lua/quota_*.lua``) timed by the Redis server clock.

This module stays whole (a little over 400 lines): every method is one call of the same scripts on the
same keys, and splitting the limiter would scatter the key layout that all of them must agree on.

Test seam: ``QuotaLimiter(..., clock=...)`` passes ``clock()`` (ms) to the scripts instead of letting
them read ``TIME``, so property tests can drive time. Production never passes a clock.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import redis

from config.settings import AccountSettings, ConfigError, Settings, account_named
from core.catalog import DEFAULT_MODEL, MODELS, Catalog, PoolCaps, pool_caps
from core.keys import Keys
from core.lua_scripts import load_script
from core.messages import STEP_WEIGHT
from core.quota_outcomes import AccountQuota, Acquired, Dispatched
from core.replication import ReplicaAcks

#: Lease members that stand for an unknown task's slot after its job was tried again (see detach_hold).
HELD_PREFIX = "held:"

#: Longest wait hint for a full in-progress set: leases expire late, but releases come at any time.
IN_PROGRESS_HINT_CAP_S = 1.0
#: Wait hint for a paused account (a pause has no end time; waiters re-check).
PAUSED_RECHECK_S = 5.0
#: Longest single BLPOP on the wake list: well inside the clients' socket timeout.
WAKE_WAIT_MAX_S = 10.0
#: Wakes kept on the list at most (more than the submitters that can wait on it wake nobody more).
WAKES_KEPT = 64
#: How many of a pool's first ready jobs a dispatch looks at (a job pinned to a busy account may not go
#: where the next one could).
READY_LOOK = 8
#: Exponential cooldown when the upstream gives no Retry-After: 1, 2, 4, ... up to 60 s.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
#: A streak of cooldowns is forgotten after this long even without a success.
BACKOFF_MEMORY_S = 3600.0


#: Caps of a pool on an account.
CapsFor = Callable[[AccountSettings, str], PoolCaps]


def default_caps(account: AccountSettings, pool: str) -> PoolCaps:
    """The caps without a deployment's ``models`` settings (the account's own and the catalog's)."""
    return pool_caps(account, MODELS[pool])


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class QuotaLimiter:
    """Quota slots, cooldowns, pauses and recordInfo tokens for a pool of accounts."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        accounts: Sequence[AccountSettings],
        *,
        caps: CapsFor = default_caps,
        share_caps: Mapping[str, float] | None = None,
        aging_s: float = 600.0,
        lease_ttl_s: float = 120.0,
        unknown_grace_s: float = 900.0,
        clock: Callable[[], int] | None = None,
        replica_acks: int = -1,
        replica_ack_timeout_ms: int = 200,
    ) -> None:
        self._redis = client
        self._replica_acks = ReplicaAcks(client, replica_acks)
        self.replica_ack_timeout_ms = replica_ack_timeout_ms
        self._keys = keys
        self._accounts = {account.name: account for account in accounts}
        self._caps = caps
        #: Principal -> the share of each pool's in-progress slots its jobs may hold at most.
        self._share_caps = dict(share_caps or {})
        self.aging_s = aging_s
        self.lease_ttl_s = lease_ttl_s
        self.unknown_grace_s = unknown_grace_s
        self._clock = clock
        self._dispatch = load_script(client, "quota_dispatch")
        self._renew = load_script(client, "quota_renew")
        self._cooldown = load_script(client, "quota_cooldown")
        self._snapshot = load_script(client, "quota_snapshot")
        self._reclaim = load_script(client, "quota_reclaim")
        self._release = load_script(client, "quota_release")
        self._unsent = load_script(client, "quota_unsent")
        self._calls = load_script(client, "quota_calls")
        self._detach = load_script(client, "quota_detach")

    @classmethod
    def for_settings(cls, client: redis.Redis, keys: Keys, settings: Settings) -> QuotaLimiter:
        """The limiter every process uses: the accounts, pools' caps, lease TTL and unknown-outcome grace of
        ``settings``."""
        return cls(
            client,
            keys,
            settings.accounts,
            caps=Catalog(settings).caps,
            share_caps={p.name: p.max_slot_share for p in settings.ingress_principals if p.max_slot_share},
            aging_s=settings.fair_share_aging_s,
            lease_ttl_s=settings.quota_lease_ttl_s,
            unknown_grace_s=settings.unknown_outcome_grace_s,
            replica_acks=settings.replica_acks,
            replica_ack_timeout_ms=settings.quota_replica_ack_timeout_ms,
        )

    @property
    def account_names(self) -> list[str]:
        return list(self._accounts)

    @property
    def pools(self) -> list[str]:
        return list(MODELS)

    def caps(self, account: str, pool: str = DEFAULT_MODEL) -> PoolCaps:
        return self._caps(self._account(account), pool)

    # -- slots ----------------------------------------------------------------------------------------
    def dispatch(self, *, pools: Sequence[str] | None = None) -> Dispatched:
        """Take the next job to submit from the ready sets of ``pools`` (default: all) with a slot for it:
        the first by rank whose pool has room on an account it may use (see the module docstring).

        No ``WAIT`` for the replicas here: the createTask marker a submit writes before any createTask
        waits for them, and replication offsets are global, so that acknowledgement covers the slot taken
        before it (one WAIT, not two, between a free slot and the next createTask)."""
        names = list(self._accounts)
        chosen_pools = list(pools if pools is not None else MODELS)
        reply = self._run_dispatch(names, chosen_pools, given="", acknowledge=False)
        if int(reply[0]) == 2:
            return Dispatched(None)
        if int(reply[0]) == 0:
            return Dispatched(None, wait_s=int(reply[1]) / 1000, reason=_text(reply[2]))
        job, pool, account = _text(reply[1]), chosen_pools[int(reply[2])], names[int(reply[3])]
        return Dispatched(job, pool=pool, account=account, rank=_text(reply[4]))

    def take_unlimited(self, account: str) -> Dispatched:
        """The first ready job by rank, with no quota at all (a benchmark's baseline, ``quota_enforce``
        off: Celery's rate_limit alone)."""
        heads: list[tuple[float, str, str]] = []
        for pool in MODELS:
            head = cast("list[tuple[Any, float]]", self._redis.zrange(self._keys.ready(pool), 0, 0, withscores=True))
            for job, rank in head:
                heads.append((float(rank), _text(job), pool))
        for rank, job, pool in sorted(heads):
            if self._redis.zrem(self._keys.ready(pool), job):
                self._redis.zadd(self._keys.dispatched(), {job: time.time() * 1000})
                return Dispatched(job, pool=pool, account=account, rank=repr(rank))
        return Dispatched(None)

    def acquire_slot(
        self, job_id: str, *, pool: str = DEFAULT_MODEL, accounts: Sequence[str] | None = None
    ) -> Acquired:
        """Take a slot in ``pool`` for ``job_id`` itself on the candidate with the most headroom (ties: the
        earlier one), whatever the ready sets hold.

        ``accounts`` narrows and orders the candidates (default: every account, in settings order). A job
        that already holds a lease on a candidate gets that account back without a second creation entry;
        if that account is cooling down or paused, the lease is dropped and the job competes like any other
        (its creation entry stays spent: double counting is safe, undercounting is not).
        """
        names = list(dict.fromkeys(accounts if accounts is not None else self._accounts))
        if not names:
            raise ConfigError("no account to acquire a quota slot on")
        reply = self._run_dispatch(names, [pool], given=job_id)
        if int(reply[0]) != 1:
            return Acquired(None, wait_s=int(reply[1]) / 1000, reason=_text(reply[2]))
        chosen = names[int(reply[3])]
        if reply[-1] is False:
            # The slot (its lease) goes back; its creation entry stays spent (double counting is safe).
            self.release(chosen, job_id, pool=pool)
            return Acquired(None, wait_s=self.replica_ack_timeout_ms / 1000, reason="replicas")
        return Acquired(chosen)

    def _run_dispatch(
        self, names: Sequence[str], pools: Sequence[str], *, given: str, acknowledge: bool = True
    ) -> list[Any]:
        """quota_dispatch.lua over ``names`` × ``pools``; with replicas wanted, WAIT on the same connection
        and append False to the reply when too few acknowledged a taken slot."""
        keys: list[str] = [self._keys.dispatched(), self._keys.waiting(), self._keys.creation_log()]
        args: list[str | int | float] = [
            self._now(),
            _ms(self.lease_ttl_s),
            _ms(IN_PROGRESS_HINT_CAP_S),
            _ms(PAUSED_RECHECK_S),
            len(names),
            len(pools),
            given,
            READY_LOOK,
            STEP_WEIGHT,
            _ms(self.aging_s),
            len(self._share_caps),
        ]
        for principal, share in self._share_caps.items():
            args += [principal, share]
        settings = [self._account(name) for name in names]
        for account in settings:
            keys += [self._keys.cooldown(account.name), self._keys.pause(account.name)]
            keys += [
                self._keys.create_requests(account.name),
                self._keys.balance(account.name),
                self._keys.balance_holds(account.name),
            ]
            # Widened by the guard: a request is logged just before it is sent, the upstream counts it on arrival.
            request_window = account.create_requests_window_s + account.window_guard_s
            args += [account.name, account.create_requests_per_window or 0, _ms(request_window)]
        for pool in pools:
            keys += [
                self._keys.ready(pool),
                self._keys.ready_meta(pool),
                self._keys.fair(pool),
                self._keys.ready_age(pool),
            ]
            for account in settings:
                keys += [
                    self._keys.creations(account.name, pool),
                    self._keys.leases(account.name, pool),
                    self._keys.lease_owners(account.name, pool),
                ]
                caps = self._caps(account, pool)
                args += [caps.in_progress, caps.creations, _ms(account.enforced_window_s)]
        wanted = self._replica_acks.wanted() if acknowledge else 0
        if not wanted:
            return list(self._dispatch(keys=keys, args=args))
        with self._redis.pipeline(transaction=False) as pipe:
            self._dispatch(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", wanted, self.replica_ack_timeout_ms)  # type: ignore[no-untyped-call]
            reply, acks = pipe.execute()
        reply = list(reply)
        if int(reply[0]) == 1 and int(acks) < wanted:
            reply.append(False)
        return reply

    def renew_lease(self, account: str, job_id: str, ttl_s: float | None = None, *, pool: str = DEFAULT_MODEL) -> bool:
        """Extend the job's lease to at least now + ``ttl_s``; False if it holds none (reclaimed/released)."""
        self._account(account)
        ttl = self.lease_ttl_s if ttl_s is None else ttl_s
        leases = self._keys.leases(account, pool)
        return bool(self._renew(keys=[leases], args=[self._now(), job_id, _ms(ttl)]))

    def release(self, account: str, job_id: str, *, pool: str = DEFAULT_MODEL) -> None:
        """Give the slot back (terminal state) and wake one submitter waiting for one; the job leaves the
        poll plan. Idempotent. The creation entry stays: it was spent."""
        self._account(account)
        keys = self._keys
        self._release(
            keys=[
                keys.leases(account, pool),
                keys.dispatch_wakes(),
                keys.poll_plan(account),
                keys.poll_owners(account),
                keys.lease_owners(account, pool),
            ],
            args=[job_id, WAKES_KEPT],
        )

    def release_unsent(
        self, job_id: str, *, pool: str = DEFAULT_MODEL, accounts: Sequence[str] | None = None
    ) -> str | None:
        """A slot taken for a createTask that was surely never sent: on the account where the job holds
        its lease, give back the creation it spent and release the slot. The account, or None when the
        job holds no lease (it lapsed; its creation then stays spent, which is safe)."""
        for name in accounts if accounts is not None else self._accounts:
            leases, creations = self._keys.leases(name, pool), self._keys.creations(name, pool)
            if self._unsent(keys=[leases, creations], args=[job_id]):
                self.release(name, job_id, pool=pool)
                return name
        return None

    def wait_for_release(self, timeout_s: float) -> bool:
        """Block until a slot is released or a job is made ready anywhere, or ``timeout_s`` passes; True if
        a wake came. A wake may be stale (nobody waited for it): the caller looks again either way."""
        timeout = min(max(timeout_s, 0.001), WAKE_WAIT_MAX_S)
        return self._redis.blpop([self._keys.dispatch_wakes()], timeout=timeout) is not None

    def hold(self, account: str, job_id: str, grace_s: float | None = None, *, pool: str = DEFAULT_MODEL) -> bool:
        """createTask outcome unknown: the task may exist, so keep the slot for ``grace_s`` (default
        ``unknown_grace_s``). The creation entry is never removed early anyway. False if no lease was left
        to hold (it expired and was reclaimed); a lease is never re-added past the limit.
        """
        return self.renew_lease(account, job_id, self.unknown_grace_s if grace_s is None else grace_s, pool=pool)

    def detach_hold(self, account: str, job_id: str, *, pool: str = DEFAULT_MODEL) -> bool:
        """The job is tried again while its unknown task may still run upstream: its held slot stays
        taken, as a lease of its own (``held:<job_id>:<n>``, same expiry, released by nothing but time),
        and the job's next dispatch takes a fresh slot and logs a fresh creation. False if it held none."""
        self._account(account)
        member = f"{HELD_PREFIX}{job_id}:{uuid.uuid4().hex[:8]}"
        return bool(self._detach(keys=[self._keys.leases(account, pool)], args=[job_id, member]))

    def reclaim_expired(self) -> dict[str, list[str]]:
        """Drop expired leases; return the job ids reclaimed, per account (accounts with none left out).

        ``dispatch`` drops expired leases on the pools it looks at too (without reporting them), so this
        reports the ones nobody tripped over first.
        """
        pairs = [(name, pool) for name in self._accounts for pool in MODELS]
        slot_keys = [
            key for name, pool in pairs for key in (self._keys.leases(name, pool), self._keys.lease_owners(name, pool))
        ]
        reply = self._reclaim(keys=slot_keys, args=[self._now()])
        out: dict[str, list[str]] = {}
        for (name, _pool), jobs in zip(pairs, reply, strict=True):
            if jobs:
                out.setdefault(name, []).extend(_text(job) for job in jobs)
        return out

    # -- cooldowns and pauses -------------------------------------------------------------------------
    # -- cooldowns and pauses -------------------------------------------------------------------------
    def cooldown(self, account: str, retry_after_s: float | None) -> float:
        """Keep every submitter off ``account`` for ``retry_after_s`` (upstream 429/455), or, without it,
        for 1, 2, 4, ... ≤ 60 s by consecutive cooldowns. Never shortens a running cooldown; a streak only
        grows once the running cooldown is over. Returns the seconds now in force.
        """
        self._account(account)
        retry_after = "" if retry_after_s is None else _ms(retry_after_s)
        applied = self._cooldown(
            keys=[self._keys.cooldown(account), self._keys.backoff(account)],
            args=[self._now(), retry_after, _ms(BACKOFF_FIRST_S), _ms(BACKOFF_MAX_S), _ms(BACKOFF_MEMORY_S)],
        )
        return int(applied) / 1000

    def note_success(self, account: str) -> None:
        """A createTask went through: the next cooldown starts the backoff from 1 s again."""
        self._redis.delete(self._keys.backoff(account))

    def pause(self, account: str, reason: str) -> None:
        """Stop submitting on ``account`` until :meth:`resume` (no credits, key cap, auth...)."""
        self._account(account)
        self._redis.set(self._keys.pause(account), reason)

    def resume(self, account: str) -> None:
        self._redis.delete(self._keys.pause(account))

    def paused(self, account: str) -> str | None:
        """Why ``account`` is paused, or None."""
        reason = self._redis.get(self._keys.pause(account))
        return None if reason is None else _text(reason)

    # -- recordInfo -----------------------------------------------------------------------------------
    def take_record_info_call(self, account: str, caller: str = "") -> float:
        """Log one recordInfo call (shared by all poll workers): 0.0 if it may go now, else seconds until
        one may. Holds in every rolling window, whatever the number of workers (no burst on top)."""
        calls, window_s = self._account(account).record_info_window
        log = self._keys.record_info_calls(account)
        wait = self._calls(keys=[log], args=[self._now(), calls, _ms(window_s), caller or "call"])
        return float(_text(wait))

    # -- status ---------------------------------------------------------------------------------------
    def snapshot(self, account: str | None = None, *, pool: str | None = DEFAULT_MODEL) -> list[AccountQuota]:
        """Every account's quota state (or one account's) in ``pool`` (None: in every pool, account by
        account), read in one round trip."""
        names = list(self._accounts) if account is None else [account]
        pools = list(MODELS) if pool is None else [pool]
        pairs = [(self._account(name), each) for name in names for each in pools]
        keys = [key for s, each in pairs for key in self._quota_keys(s.name, each)]
        args: list[str | int] = [self._now(), *(_ms(s.enforced_window_s) for s, _ in pairs)]
        reply = self._snapshot(keys=keys, args=args)
        out = []
        for (s, each), (created, leased, cooling, reason) in zip(pairs, reply, strict=True):
            caps = self._caps(s, each)
            out.append(
                AccountQuota(
                    account=s.name,
                    pool=each,
                    creations_in_window=int(created),
                    creations_limit=caps.creations,
                    in_progress=int(leased),
                    in_progress_limit=caps.in_progress,
                    cooldown_s=int(cooling) / 1000,
                    paused=None if reason is None else _text(reason),
                )
            )
        return out

    # -- helpers --------------------------------------------------------------------------------------
    def _account(self, name: str) -> AccountSettings:
        return account_named(self._accounts, name)

    def _quota_keys(self, name: str, pool: str) -> list[str]:
        """The four keys per (account, pool), in the order quota_snapshot.lua expects."""
        keys = self._keys
        return [keys.creations(name, pool), keys.leases(name, pool), keys.cooldown(name), keys.pause(name)]

    def _now(self) -> str:
        """The scripts' ``now`` argument: '' (Redis TIME) unless a test clock is set."""
        return "" if self._clock is None else str(int(self._clock()))
