"""Per-account upstream quotas, enforced in Redis for every worker at once (ARCHITECTURE.md, "Quotas").

Each account has, under :class:`~core.keys.Keys`:

- a sliding creation log (sorted set, one entry per createTask, score = ms), capped by
  ``creations_limit`` over ``creation_window_s`` — one ``ZREMRANGEBYSCORE`` + ``ZCARD``, however long the
  window (no per-second keys);
- a lease set (member = job id, score = expiry ms), capped by ``in_progress_limit``; a slot is taken
  *before* createTask together with its creation entry, renewed by polls and released at a terminal
  state, so a dead worker leaks a slot for at most one lease TTL;
- a cooldown (upstream 429/455), a pause (402/433/...) and a rolling log of recordInfo calls;
- a wake list: each released slot pushes one entry, and a submitter waiting for a slot blocks on it
  (``BLPOP``), so a freed slot is taken again at once, not at the waiter's next look.

Every decision is one Lua script (``core/lua/quota_*.lua``) timed by the Redis server clock.

Test seam: ``QuotaLimiter(..., clock=...)`` passes ``clock()`` (ms) to the scripts instead of letting
them read ``TIME``, so property tests can drive time. Production never passes a clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from config.settings import AccountSettings, ConfigError, Settings, account_named
from core.keys import Keys
from core.lua_scripts import load_script
from core.replication import ReplicaAcks

#: Lease members that stand for an unknown task's slot after its job was tried again (see detach_hold).
HELD_PREFIX = "held:"

#: Longest wait hint for a full in-progress set: leases expire late, but releases come at any time.
IN_PROGRESS_HINT_CAP_S = 1.0
#: Wait hint for a paused account (a pause has no end time; waiters re-check).
PAUSED_RECHECK_S = 5.0
#: Longest single BLPOP on the wake lists: well inside the clients' socket timeout.
WAKE_WAIT_MAX_S = 10.0
#: Exponential cooldown when the upstream gives no Retry-After: 1, 2, 4, ... up to 60 s.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 60.0
#: A streak of cooldowns is forgotten after this long even without a success.
BACKOFF_MEMORY_S = 3600.0


@dataclass(frozen=True)
class Acquired:
    """The outcome of :meth:`QuotaLimiter.acquire_slot`.

    With ``account`` set, the job holds a slot (creation entry + lease) on it. Otherwise ``wait_s`` (> 0)
    is how long until the account that frees soonest may have room, and ``reason`` says what blocks it:
    ``in_progress``, ``creations``, ``cooldown``, ``paused``, or ``replicas`` (no replica acknowledged
    the slot in time: a failover now could forget it, so the job does not go to the upstream yet).
    """

    account: str | None
    wait_s: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class AccountQuota:
    """One account's quota state at an instant (status and metrics)."""

    account: str
    creations_in_window: int
    creations_limit: int
    in_progress: int
    in_progress_limit: int
    cooldown_s: float
    paused: str | None


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
        self.lease_ttl_s = lease_ttl_s
        self.unknown_grace_s = unknown_grace_s
        self._clock = clock
        self._acquire = load_script(client, "quota_acquire")
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
        """The limiter every process uses: the accounts, lease TTL and unknown-outcome grace of ``settings``."""
        return cls(
            client,
            keys,
            settings.accounts,
            lease_ttl_s=settings.quota_lease_ttl_s,
            unknown_grace_s=settings.unknown_outcome_grace_s,
            replica_acks=settings.replica_acks,
            replica_ack_timeout_ms=settings.quota_replica_ack_timeout_ms,
        )

    # -- slots ----------------------------------------------------------------------------------------
    def acquire_slot(self, job_id: str, *, accounts: Sequence[str] | None = None) -> Acquired:
        """Take a slot for ``job_id`` on the candidate with the most headroom (ties: the earlier one).

        ``accounts`` narrows and orders the candidates (default: every account, in settings order). A job
        that already holds a lease on a candidate gets that account back without a second creation entry;
        if that account is cooling down or paused, the lease is dropped and the job competes like any other
        (its creation entry stays spent: double counting is safe, undercounting is not).
        """
        names = list(dict.fromkeys(accounts if accounts is not None else self._accounts))
        if not names:
            raise ConfigError("no account to acquire a quota slot on")
        keys: list[str] = []
        args: list[str | int] = [
            self._now(),
            job_id,
            _ms(self.lease_ttl_s),
            _ms(IN_PROGRESS_HINT_CAP_S),
            _ms(PAUSED_RECHECK_S),
        ]
        for name in names:
            account = self._account(name)
            keys += self._quota_keys(name)
            args += [account.in_progress_limit, account.creations_limit, _ms(account.enforced_window_s)]
        wanted = self._replica_acks.wanted()
        if not wanted:
            reply = self._acquire(keys=keys, args=args)
            acks = 0
        else:
            # On one connection, so WAIT counts the replicas that have this very write.
            with self._redis.pipeline(transaction=False) as pipe:
                self._acquire(keys=keys, args=args, client=pipe)
                pipe.execute_command("WAIT", wanted, self.replica_ack_timeout_ms)  # type: ignore[no-untyped-call]
                reply, acks = pipe.execute()
        if int(reply[0]) != 1:
            return Acquired(None, wait_s=int(reply[1]) / 1000, reason=_text(reply[2]))
        chosen = names[int(reply[1])]
        if int(acks) < wanted:
            # The slot (its lease) goes back; its creation entry stays spent (double counting is safe).
            self.release(chosen, job_id)
            return Acquired(None, wait_s=self.replica_ack_timeout_ms / 1000, reason="replicas")
        return Acquired(chosen)

    def renew_lease(self, account: str, job_id: str, ttl_s: float | None = None) -> bool:
        """Extend the job's lease to at least now + ``ttl_s``; False if it holds none (reclaimed/released)."""
        self._account(account)
        ttl = self.lease_ttl_s if ttl_s is None else ttl_s
        return bool(self._renew(keys=[self._keys.leases(account)], args=[self._now(), job_id, _ms(ttl)]))

    def release(self, account: str, job_id: str) -> None:
        """Give the slot back (terminal state) and wake one submitter waiting for it; the job leaves the
        poll plan. Idempotent. The creation entry stays: it was spent."""
        limit = self._account(account).in_progress_limit
        keys = self._keys
        self._release(
            keys=[keys.leases(account), keys.slot_wakes(account), keys.poll_plan(account), keys.poll_owners(account)],
            args=[job_id, limit],
        )

    def release_unsent(self, job_id: str) -> str | None:
        """A slot taken for a createTask that was surely never sent: on the account where the job holds
        its lease, give back the creation it spent and release the slot. The account, or None when the
        job holds no lease (it lapsed; its creation then stays spent, which is safe)."""
        for name in self._accounts:
            if self._unsent(keys=[self._keys.leases(name), self._keys.creations(name)], args=[job_id]):
                self.release(name, job_id)
                return name
        return None

    def wait_for_release(self, timeout_s: float, accounts: Sequence[str] | None = None) -> bool:
        """Block until a slot is released on one of ``accounts`` (default: all) or ``timeout_s`` passes;
        True if a release woke us. A wake may be stale (a release nobody waited for): the caller asks
        :meth:`acquire_slot` again either way."""
        names = list(accounts if accounts is not None else self._accounts)
        timeout = min(max(timeout_s, 0.001), WAKE_WAIT_MAX_S)
        return self._redis.blpop([self._keys.slot_wakes(name) for name in names], timeout=timeout) is not None

    def hold(self, account: str, job_id: str, grace_s: float | None = None) -> bool:
        """createTask outcome unknown: the task may exist, so keep the slot for ``grace_s`` (default
        ``unknown_grace_s``). The creation entry is never removed early anyway. False if no lease was left
        to hold (it expired and was reclaimed); a lease is never re-added past the limit.
        """
        return self.renew_lease(account, job_id, self.unknown_grace_s if grace_s is None else grace_s)

    def detach_hold(self, account: str, job_id: str) -> bool:
        """The job is tried again while its unknown task may still run upstream: its held slot stays
        taken, as a lease of its own (``held:<job_id>:<n>``, same expiry, released by nothing but time),
        and the job's next acquire takes a fresh slot and logs a fresh creation. False if it held none."""
        self._account(account)
        member = f"{HELD_PREFIX}{job_id}:{uuid.uuid4().hex[:8]}"
        return bool(self._detach(keys=[self._keys.leases(account)], args=[job_id, member]))

    def reclaim_expired(self) -> dict[str, list[str]]:
        """Drop expired leases; return the job ids reclaimed, per account (accounts with none left out).

        ``acquire_slot`` drops expired leases on its candidates too (without reporting them), so this
        reports the ones nobody tripped over first.
        """
        names = list(self._accounts)
        reply = self._reclaim(keys=[self._keys.leases(name) for name in names], args=[self._now()])
        return {name: [_text(job) for job in jobs] for name, jobs in zip(names, reply, strict=True) if jobs}

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
    def snapshot(self, account: str | None = None) -> list[AccountQuota]:
        """Every account's quota state (or one account's), read in one round trip."""
        names = list(self._accounts) if account is None else [account]
        settings = [self._account(name) for name in names]
        keys = [key for name in names for key in self._quota_keys(name)]
        args: list[str | int] = [self._now(), *(_ms(s.enforced_window_s) for s in settings)]
        reply = self._snapshot(keys=keys, args=args)
        return [
            AccountQuota(
                account=s.name,
                creations_in_window=int(created),
                creations_limit=s.creations_limit,
                in_progress=int(leased),
                in_progress_limit=s.in_progress_limit,
                cooldown_s=int(cooling) / 1000,
                paused=None if reason is None else _text(reason),
            )
            for s, (created, leased, cooling, reason) in zip(settings, reply, strict=True)
        ]

    # -- helpers --------------------------------------------------------------------------------------
    def _account(self, name: str) -> AccountSettings:
        return account_named(self._accounts, name)

    def _quota_keys(self, name: str) -> list[str]:
        """The four keys per account, in the order quota_acquire.lua and quota_snapshot.lua expect."""
        keys = self._keys
        return [keys.creations(name), keys.leases(name), keys.cooldown(name), keys.pause(name)]

    def _now(self) -> str:
        """The scripts' ``now`` argument: '' (Redis TIME) unless a test clock is set."""
        return "" if self._clock is None else str(int(self._clock()))
