"""Property tests: the real Lua limiter on a real Redis, driven by Hypothesis against a pure model.

Time is the limiter's test seam (``clock=``): the state machine owns the clock and moves it in small
steps, exactly onto the instants where a lease expires or a creation leaves the window (and just before),
and in jumps past the window. Two accounts with tiny, different limits so headroom choice matters.

Checked after every step or call:
- the limiter and the model agree on every answer (account, wait hint, reason, renewals, cooldowns,
  reclaimed ids, snapshots, token waits);
- live leases never exceed an account's in-progress limit; creations inside any window never exceed its
  creations limit (checked over the full creation history, which the model never forgets);
- independently of the model's bookkeeping, an oracle scans the future: acquire succeeds exactly when
  there is capacity now, and a refusal's wait hint is > 0 and never longer than the true time to capacity.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from pydantic import SecretStr

from config.settings import AccountSettings
from core.keys import Keys
from core.quota import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    IN_PROGRESS_HINT_CAP_S,
    PAUSED_RECHECK_S,
    QuotaLimiter,
)
from core.quota_outcomes import Acquired

pytestmark = pytest.mark.integration

LEASE_TTL_MS = 2_000
GRACE_MS = 5_000
START_MS = 1_700_000_000_000
ACCOUNTS = [
    AccountSettings(
        name="a",
        api_key=SecretStr("k"),
        max_in_progress=3,
        max_creations_per_window=5,
        creation_window_s=10.0,
        record_info_per_s=2.0,
    ),
    AccountSettings(
        name="b",
        api_key=SecretStr("k"),
        max_in_progress=3,
        in_progress_margin=1,
        max_creations_per_window=4,
        creations_margin=1,
        creation_window_s=4.0,
        record_info_per_s=0.5,
    ),
]
NAMES = [account.name for account in ACCOUNTS]
JOBS = [f"job{i}" for i in range(7)]
CANDIDATES = st.sampled_from([None, ("a",), ("b",), ("b", "a")])


@dataclass
class ModelAccount:
    """One account as the limiter should see it."""

    in_progress_limit: int
    creations_limit: int
    window_ms: int
    record_info: tuple[int, int]  # calls allowed in any rolling window of this many ms
    leases: dict[str, int] = field(default_factory=dict)  # job → expiry, until dropped
    creations: list[int] = field(default_factory=list)  # until dropped from the window
    history: list[int] = field(default_factory=list)  # every creation ever
    cooldown_end: int = 0
    streak: int = 0
    paused: str | None = None
    calls: list[int] = field(default_factory=list)  # recordInfo calls still in the rolling window

    def drop_expired(self, now: int) -> None:
        self.leases = {job: expiry for job, expiry in self.leases.items() if expiry > now}
        self.creations = [at for at in self.creations if at > now - self.window_ms]

    def usable(self, now: int) -> bool:
        return self.paused is None and self.cooldown_end <= now


class QuotaModel:
    """The decisions of the Lua scripts, in plain Python."""

    def __init__(self) -> None:
        self.accounts = {
            s.name: ModelAccount(
                s.in_progress_limit,
                s.creations_limit,
                round(s.enforced_window_s * 1000),
                (s.record_info_window[0], round(s.record_info_window[1] * 1000)),
            )
            for s in ACCOUNTS
        }

    def acquire(self, job: str, names: list[str], now: int) -> Acquired:
        accounts = [self.accounts[name] for name in names]
        for account in accounts:
            account.drop_expired(now)
        for name, account in zip(names, accounts, strict=True):
            if job in account.leases:
                if account.usable(now):
                    account.leases[job] = max(account.leases[job], now + LEASE_TTL_MS)
                    return Acquired(name)
                del account.leases[job]
        best, best_room = None, 0
        for name, account in zip(names, accounts, strict=True):
            if account.usable(now):
                room = min(
                    account.in_progress_limit - len(account.leases), account.creations_limit - len(account.creations)
                )
                if room > best_room:
                    best, best_room = name, room
        if best is not None:
            chosen = self.accounts[best]
            chosen.creations.append(now)
            chosen.history.append(now)
            chosen.leases[job] = now + LEASE_TTL_MS
            return Acquired(best)
        waits = [self._wait(account, now) for account in accounts]
        wait, reason = min(waits, key=lambda pair: pair[0])  # min keeps the first of equals
        return Acquired(None, wait_s=wait / 1000, reason=reason)

    @staticmethod
    def _wait(account: ModelAccount, now: int) -> tuple[int, str]:
        if account.paused is not None:
            return round(PAUSED_RECHECK_S * 1000), "paused"
        wait, reason = 0, "in_progress"
        if len(account.leases) >= account.in_progress_limit:
            expiries = sorted(account.leases.values())
            freeing = expiries[len(expiries) - account.in_progress_limit]
            wait = min(round(IN_PROGRESS_HINT_CAP_S * 1000), freeing - now)
        if len(account.creations) >= account.creations_limit:
            created = sorted(account.creations)
            creations_wait = created[len(created) - account.creations_limit] + account.window_ms - now
            if creations_wait > wait:
                wait, reason = creations_wait, "creations"
        cooling = max(0, account.cooldown_end - now)
        if cooling >= wait:
            wait, reason = cooling, "cooldown"
        return wait, reason

    def extend(self, name: str, job: str, ttl_ms: int, now: int) -> bool:
        account = self.accounts[name]
        if job not in account.leases:
            return False
        account.leases[job] = max(account.leases[job], now + ttl_ms)
        return True

    def cooldown(self, name: str, retry_after_ms: int | None, now: int) -> int:
        account = self.accounts[name]
        if account.cooldown_end <= now:
            account.streak += 1
        if retry_after_ms is None:
            first, longest = round(BACKOFF_FIRST_S * 1000), round(BACKOFF_MAX_S * 1000)
            duration = min(longest, first << (max(account.streak, 1) - 1))
        else:
            duration = max(0, retry_after_ms)
        if duration > 0 and now + duration > account.cooldown_end:
            account.cooldown_end = now + duration
            return duration
        return max(0, account.cooldown_end - now)

    def reclaim(self, now: int) -> dict[str, list[str]]:
        reclaimed = {}
        for name, account in self.accounts.items():
            expired = sorted(job for job, expiry in account.leases.items() if expiry <= now)
            account.leases = {job: expiry for job, expiry in account.leases.items() if expiry > now}
            if expired:
                reclaimed[name] = expired
        return reclaimed

    def take_call(self, name: str, now: int) -> float:
        account = self.accounts[name]
        allowed, window_ms = account.record_info
        account.calls = [at for at in account.calls if at > now - window_ms]
        if len(account.calls) >= allowed:
            return max(1, min(account.calls) + window_ms - now) / 1000
        account.calls.append(now)
        return 0.0

    def time_to_capacity(self, job: str, names: list[str], now: int) -> float:
        """Oracle, from first principles: ms until ``acquire(job)`` can succeed if nothing else happens."""
        accounts = [self.accounts[name] for name in names]
        for account in accounts:
            expiry = account.leases.get(job)
            if expiry is not None and expiry > now and account.usable(now):
                return 0
        events = {now}
        for account in accounts:
            events.update(expiry for expiry in account.leases.values() if expiry > now)
            events.update(at + account.window_ms for at in account.history if at + account.window_ms > now)
            if account.cooldown_end > now:
                events.add(account.cooldown_end)
        for t in sorted(events):
            for account in accounts:
                live_leases = sum(1 for j, expiry in account.leases.items() if expiry > t and j != job)
                live_creations = sum(1 for at in account.history if at > t - account.window_ms)
                if (
                    account.usable(t)
                    and live_leases < account.in_progress_limit
                    and live_creations < account.creations_limit
                ):
                    return t - now
        return math.inf


class QuotaMachine(RuleBasedStateMachine):
    client: redis.Redis

    def __init__(self) -> None:
        super().__init__()
        self.now = START_MS
        self.model = QuotaModel()
        self.limiter = QuotaLimiter(
            self.client,
            Keys(f"p{uuid.uuid4().hex[:8]}"),
            ACCOUNTS,
            lease_ttl_s=LEASE_TTL_MS / 1000,
            unknown_grace_s=GRACE_MS / 1000,
            clock=lambda: self.now,
        )

    # -- slots ----------------------------------------------------------------------------------------
    @rule(job=st.sampled_from(JOBS), candidates=CANDIDATES)
    def acquire(self, job: str, candidates: tuple[str, ...] | None) -> None:
        names = list(candidates or NAMES)
        oracle = self.model.time_to_capacity(job, names, self.now)
        got = self.limiter.acquire_slot(job, accounts=candidates)
        assert got == self.model.acquire(job, names, self.now)
        if got.account is not None:
            assert oracle == 0, "took a slot the oracle says does not exist"
            account = self.model.accounts[got.account]
            in_window = sum(1 for at in account.history if at > self.now - account.window_ms)
            assert in_window <= account.creations_limit
        else:
            assert oracle > 0, f"refused although there is capacity now ({got})"
            assert got.wait_s > 0
            assert round(got.wait_s * 1000) <= oracle, f"hint {got} longer than the true wait {oracle} ms"

    @rule(jobs=st.lists(st.sampled_from(JOBS), min_size=2, max_size=6), candidates=CANDIDATES)
    def acquire_burst(self, jobs: list[str], candidates: tuple[str, ...] | None) -> None:
        for job in jobs:
            self.acquire(job, candidates)

    @rule(job=st.sampled_from(JOBS), name=st.sampled_from(NAMES))
    def release(self, job: str, name: str) -> None:
        self.limiter.release(name, job)
        self.model.accounts[name].leases.pop(job, None)

    @rule(job=st.sampled_from(JOBS), name=st.sampled_from(NAMES))
    def renew(self, job: str, name: str) -> None:
        assert self.limiter.renew_lease(name, job) == self.model.extend(name, job, LEASE_TTL_MS, self.now)

    @rule(job=st.sampled_from(JOBS), name=st.sampled_from(NAMES))
    def hold(self, job: str, name: str) -> None:
        assert self.limiter.hold(name, job) == self.model.extend(name, job, GRACE_MS, self.now)

    @rule()
    def reclaim(self) -> None:
        got = {name: sorted(jobs) for name, jobs in self.limiter.reclaim_expired().items()}
        assert got == self.model.reclaim(self.now)

    # -- time -----------------------------------------------------------------------------------------
    @rule(ms=st.sampled_from([1, 10, 250, 900, 1_500, 2_500, 4_000, 12_000]) | st.integers(1, 12_000))
    def advance(self, ms: int) -> None:
        self.now += ms

    @rule(data=st.data())
    def advance_to_edge(self, data: st.DataObject) -> None:
        """Land exactly on (or 1 ms before) a lease expiry, a window exit or a cooldown end."""
        edges = sorted(
            {expiry for a in self.model.accounts.values() for expiry in a.leases.values()}
            | {at + a.window_ms for a in self.model.accounts.values() for at in a.history}
            | {a.cooldown_end for a in self.model.accounts.values()}
        )
        future = [edge for edge in edges if edge > self.now]
        if future:
            edge = data.draw(st.sampled_from(future[:6]))
            self.now = max(self.now, edge - data.draw(st.sampled_from([0, 1])))

    # -- cooldowns, pauses, tokens --------------------------------------------------------------------
    @rule(name=st.sampled_from(NAMES), retry_after_ms=st.none() | st.integers(0, 3_000))
    def cooldown(self, name: str, retry_after_ms: int | None) -> None:
        retry_after_s = None if retry_after_ms is None else retry_after_ms / 1000
        applied = self.limiter.cooldown(name, retry_after_s)
        assert applied == self.model.cooldown(name, retry_after_ms, self.now) / 1000

    @rule(name=st.sampled_from(NAMES))
    def note_success(self, name: str) -> None:
        self.limiter.note_success(name)
        self.model.accounts[name].streak = 0

    @rule(name=st.sampled_from(NAMES), reason=st.sampled_from(["no_credits", "key_cap_exceeded"]))
    def pause(self, name: str, reason: str) -> None:
        self.limiter.pause(name, reason)
        self.model.accounts[name].paused = reason

    @rule(name=st.sampled_from(NAMES))
    def resume(self, name: str) -> None:
        self.limiter.resume(name)
        self.model.accounts[name].paused = None

    @rule(name=st.sampled_from(NAMES))
    def take_record_info_call(self, name: str) -> None:
        assert self.limiter.take_record_info_call(name, "job") == pytest.approx(
            self.model.take_call(name, self.now), rel=1e-9, abs=1e-9
        )

    # -- invariants -----------------------------------------------------------------------------------
    @invariant()
    def snapshot_matches_and_limits_hold(self) -> None:
        for quota in self.limiter.snapshot():
            account = self.model.accounts[quota.account]
            live_leases = sum(1 for expiry in account.leases.values() if expiry > self.now)
            in_window = sum(1 for at in account.history if at > self.now - account.window_ms)
            assert quota.in_progress == live_leases <= quota.in_progress_limit
            assert quota.creations_in_window == in_window <= quota.creations_limit
            assert quota.cooldown_s == max(0, account.cooldown_end - self.now) / 1000
            assert quota.paused == account.paused


def test_limiter_matches_model(redis_client: redis.Redis) -> None:
    QuotaMachine.client = redis_client
    run_state_machine_as_test(
        QuotaMachine,
        settings=settings(
            max_examples=100,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
