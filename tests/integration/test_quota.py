"""The quota limiter against a real Redis, on the Redis clock (one backoff test uses the clock seam)."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import pytest
import redis
from pydantic import SecretStr

from config.settings import AccountSettings, ConfigError
from core.keys import Keys
from core.quota import QuotaLimiter
from core.quota_outcomes import Acquired

pytestmark = pytest.mark.integration

KEYS = Keys("iqtest")


def account(name: str = "a", **limits: Any) -> AccountSettings:
    return AccountSettings(name=name, api_key=SecretStr("test-key"), **{"window_guard_s": 0.0, **limits})


def wait_for_slot(limiter: QuotaLimiter, job_id: str, timeout_s: float) -> Acquired:
    """Acquire the way a submit worker does: sleep for the hint, ask again, until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = limiter.acquire_slot(job_id)
        if got.account is not None or time.monotonic() > deadline:
            return got
        time.sleep(min(got.wait_s, 0.1))


def wait_until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_acquire_up_to_the_limit_then_refused_until_a_release(redis_client: redis.Redis) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account(max_in_progress=4, in_progress_margin=1)])

    assert [limiter.acquire_slot(f"j{i}").account for i in range(3)] == ["a", "a", "a"]
    refused = limiter.acquire_slot("j3")

    assert refused.account is None
    assert refused.reason == "in_progress"
    assert 0 < refused.wait_s <= 1.0  # capped: a release may come long before the lease expires
    limiter.release("a", "j0")
    limiter.release("a", "j0")  # idempotent
    assert limiter.acquire_slot("j3").account == "a"
    [quota] = limiter.snapshot()
    assert (quota.in_progress, quota.in_progress_limit, quota.creations_in_window) == (3, 3, 4)


def test_creation_window_slides(redis_client: redis.Redis) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account(max_creations_per_window=2, creation_window_s=1.0)])
    for job in ("j1", "j2"):
        assert limiter.acquire_slot(job).account == "a"
        limiter.release("a", job)  # in-progress frees, the creations stay spent

    refused = limiter.acquire_slot("j3")
    assert refused.reason == "creations"
    # The hint is when the oldest creation leaves the window, on the Redis clock that keeps the log.
    log = cast("list[tuple[str, float]]", redis_client.zrange(KEYS.creations("a"), 0, -1, withscores=True))
    oldest_ms = min(score for _, score in log)
    assert 0 < refused.wait_s <= 1.0

    got = wait_for_slot(limiter, "j3", timeout_s=3.0)
    assert got.account == "a"
    # Granted only once the oldest creation had left the window (Redis's own clock, not ours).
    seconds, micros = cast("tuple[int, int]", redis_client.time())
    assert seconds * 1000 + micros / 1000 >= oldest_ms + 1000
    logged: list[str] = redis_client.zrange(KEYS.creations("a"), 0, -1)  # type: ignore[assignment]
    assert len(logged) <= 2 and logged[-1].startswith("j3:")  # j1's entry left the window, j3's arrived


def test_an_expired_lease_gives_its_slot_back(redis_client: redis.Redis) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account(max_in_progress=1)], lease_ttl_s=0.3)
    assert limiter.acquire_slot("dead-worker-job").account == "a"

    refused = limiter.acquire_slot("j2")
    assert (refused.reason, 0 < refused.wait_s <= 0.3) == ("in_progress", True)
    assert wait_for_slot(limiter, "j2", timeout_s=3.0).account == "a"
    assert limiter.renew_lease("a", "dead-worker-job") is False


def test_reclaim_reports_expired_leases_once(redis_client: redis.Redis) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account(), account("b")], lease_ttl_s=0.2)
    assert limiter.acquire_slot("j1", accounts=["b"]).account == "b"
    assert limiter.acquire_slot("j2", accounts=["a"]).account == "a"
    assert limiter.renew_lease("a", "j2", ttl_s=60.0)

    wait_until(lambda: limiter.snapshot("b")[0].in_progress == 0)

    assert limiter.reclaim_expired() == {"b": ["j1"]}
    assert limiter.reclaim_expired() == {}
    assert limiter.snapshot("a")[0].in_progress == 1


def test_hold_keeps_the_creation_and_extends_the_lease(redis_client: redis.Redis) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account()], lease_ttl_s=0.2, unknown_grace_s=30.0)
    assert limiter.acquire_slot("unknown").account == "a"

    assert limiter.hold("a", "unknown") is True
    assert limiter.renew_lease("a", "unknown", ttl_s=0.1) is True  # a renewal never shortens the hold

    seconds, micros = cast(tuple[int, int], redis_client.time())
    now_ms = seconds * 1000 + micros // 1000
    expiry = cast(float | None, redis_client.zscore(KEYS.leases("a"), "unknown"))
    assert expiry is not None and expiry - now_ms > 29_000
    assert redis_client.zcard(KEYS.creations("a")) == 1
    assert limiter.hold("a", "never-acquired") is False


def test_cooldown_is_honoured_and_not_compounded(redis_client: redis.Redis) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account()])

    assert limiter.cooldown("a", None) == 1.0
    assert limiter.cooldown("a", None) <= 1.0  # a second 429 from a request already in flight
    refused = limiter.acquire_slot("j1")
    assert refused.reason == "cooldown"
    assert 0.8 < refused.wait_s <= 1.0
    assert limiter.cooldown("a", 0.2) > 0.8  # never shortened

    wait_until(lambda: limiter.snapshot()[0].cooldown_s == 0)
    assert limiter.acquire_slot("j1").account == "a"
    assert limiter.cooldown("a", None) == 2.0  # the streak grows once the previous cooldown is over


def test_backoff_doubles_up_to_a_minute_and_resets_on_success(redis_client: redis.Redis) -> None:
    now = [1_700_000_000_000]
    limiter = QuotaLimiter(redis_client, KEYS, [account()], clock=lambda: now[0])

    applied = []
    for _ in range(8):
        applied.append(limiter.cooldown("a", None))
        now[0] += round(applied[-1] * 1000)
    assert applied == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]

    limiter.note_success("a")
    assert limiter.cooldown("a", None) == 1.0
    now[0] += 1000
    assert limiter.cooldown("a", 7.5) == 7.5  # Retry-After wins over the backoff


def test_pause_and_resume(redis_client: redis.Redis) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account()])
    limiter.pause("a", "no_credits")

    refused = limiter.acquire_slot("j1")
    assert (refused.account, refused.reason) == (None, "paused")
    assert refused.wait_s > 0
    assert limiter.paused("a") == "no_credits"
    assert limiter.snapshot()[0].paused == "no_credits"

    limiter.resume("a")
    assert limiter.paused("a") is None
    assert limiter.acquire_slot("j1").account == "a"


def test_two_accounts_most_headroom_wins_and_a_holder_keeps_its_account(redis_client: redis.Redis) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account("a", max_in_progress=2), account("b", max_in_progress=3)])

    assert limiter.acquire_slot("j1").account == "b"  # 3 free beats 2
    assert limiter.acquire_slot("j2").account == "a"  # 2 against 2: the first in order
    assert limiter.acquire_slot("j1").account == "b"  # redelivered: same account, no second creation
    assert redis_client.zcard(KEYS.creations("b")) == 1
    assert limiter.acquire_slot("j3", accounts=["a"]).account == "a"
    refused = limiter.acquire_slot("j4", accounts=["a"])
    assert refused.reason == "in_progress"

    limiter.cooldown("b", 30.0)
    moved = limiter.acquire_slot("j1")  # its account cools down: it competes again
    assert moved == Acquired(None, wait_s=1.0, reason="in_progress")
    assert redis_client.zscore(KEYS.leases("b"), "j1") is None


def test_unknown_account_is_a_config_error(redis_client: redis.Redis) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [account()])
    with pytest.raises(ConfigError, match="unknown account 'zz'"):
        limiter.acquire_slot("j1", accounts=["zz"])


def test_record_info_calls_hold_in_every_rolling_second_across_threads(redis_url: str) -> None:
    limiter = QuotaLimiter(redis.Redis.from_url(redis_url), KEYS, [account(record_info_per_s=10.0)])
    taken: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 2.5

    def hammer() -> None:
        while time.monotonic() < deadline:
            wait = limiter.take_record_info_call("a", "job")
            if wait == 0.0:
                with lock:
                    taken.append(time.monotonic())
            else:
                time.sleep(min(wait, 0.02))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    taken.sort()
    busiest = max(sum(1 for t in taken if start <= t < start + 1.0) for start in taken)
    assert busiest <= 10  # the upstream's count: every rolling second, no burst on top
    assert len(taken) >= 20  # 10 per 1.2 s (the second and its guard) for 2.5 s: the budget is spent


def test_a_released_slot_wakes_a_waiting_submitter(redis_url: str) -> None:
    limiter = QuotaLimiter(redis.Redis.from_url(redis_url), KEYS, [account(max_in_progress=1)])
    assert limiter.acquire_slot("j1").account == "a"
    blocked = limiter.acquire_slot("j2")
    assert blocked.reason == "in_progress"
    woken: list[bool] = []
    waiter = threading.Thread(target=lambda: woken.append(limiter.wait_for_release(8.0)))
    waiter.start()
    limiter.release("a", "j1")
    waiter.join(timeout=10)
    assert woken == [True]  # the release woke it, not the 8 s timeout
    assert limiter.acquire_slot("j2").account == "a"


def test_a_release_without_a_lease_wakes_nobody(redis_url: str) -> None:
    limiter = QuotaLimiter(redis.Redis.from_url(redis_url), KEYS, [account(max_in_progress=1)])
    limiter.release("a", "never-held")
    assert limiter.wait_for_release(0.2) is False


def _acquire_in_a_process(redis_url: str, prefix: str, worker: int, barrier: Any) -> tuple[int, list[str]]:
    """Child of the multi-process test: 50 attempts, releasing every third slot it gets."""
    client = redis.Redis.from_url(redis_url)
    keys = Keys(prefix)
    limiter = QuotaLimiter(client, keys, [account(max_in_progress=30, max_creations_per_window=45)])
    barrier.wait()
    successes, violations = 0, []
    for attempt in range(50):
        job_id = f"w{worker}-{attempt}"
        if limiter.acquire_slot(job_id).account is None:
            continue
        successes += 1
        leases, creations = int(client.zcard(keys.leases("a"))), int(client.zcard(keys.creations("a")))  # type: ignore[arg-type]
        if leases > 30 or creations > 45:
            violations.append(f"{job_id}: {leases} leases, {creations} creations")
        if successes % 3 == 0:
            limiter.release("a", job_id)
    return successes, violations


def test_processes_never_overrun_the_limits(redis_url: str, redis_client: redis.Redis) -> None:
    context = multiprocessing.get_context("spawn")
    prefix = f"mp{uuid.uuid4().hex[:8]}"
    with context.Manager() as manager, context.Pool(4) as pool:
        barrier = manager.Barrier(4)
        results = pool.starmap(_acquire_in_a_process, [(redis_url, prefix, n, barrier) for n in range(4)])

    successes = sum(count for count, _ in results)
    assert [v for _, found in results for v in found] == []
    assert 30 <= successes <= 45
    keys = Keys(prefix)
    assert redis_client.zcard(keys.creations("a")) == successes  # one creation per slot, never one alone
    assert cast(int, redis_client.zcard(keys.leases("a"))) <= 30
