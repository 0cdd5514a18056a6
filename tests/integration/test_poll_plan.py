"""The poll planner's calendar against a real Redis (the clock seam drives time)."""

from __future__ import annotations

from itertools import pairwise
from typing import cast

import pytest
import redis
from pydantic import SecretStr

from config.settings import AccountSettings
from core.keys import Keys
from core.quota import QuotaLimiter
from workers.poll_plan import TAKEOVER_S, PollPlan, Turn, TurnCode

pytestmark = pytest.mark.integration

KEYS = Keys("iqplan")
START_MS = 1_700_000_000_000
#: 10 calls per rolling second widened by 0.2 s: one slot every 120 ms.
ACCOUNT = AccountSettings(name="a", api_key=SecretStr("k"), record_info_per_s=10.0, record_info_guard_s=0.2)


class Clock:
    def __init__(self) -> None:
        self.ms = START_MS

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def plan(redis_client: redis.Redis, clock: Clock) -> PollPlan:
    return PollPlan(redis_client, KEYS, [ACCOUNT], clock=clock)


def turn(plan: PollPlan, job: str, message: str, not_before_ms: int = START_MS) -> Turn:
    return plan.turn("a", job, message, not_before_s=not_before_ms / 1000)


def test_spacing_is_the_rolling_window_over_its_calls(plan: PollPlan) -> None:
    assert plan.spacing_s("a") == pytest.approx(0.12)


def test_no_check_before_the_first_plausible_completion(plan: PollPlan, clock: Clock) -> None:
    first = turn(plan, "j1", "m1", not_before_ms=START_MS + 10_000)
    assert first.code is TurnCode.WAIT
    assert 10.0 <= first.wait_s < 10.0 + 0.12
    clock.ms += round(first.wait_s * 1000)
    assert turn(plan, "j1", "m1").code is TurnCode.GO


def test_checks_due_together_get_slots_one_spacing_apart(plan: PollPlan) -> None:
    waits = [plan.book("a", f"j{i}", f"m{i}", delay_s=0) for i in range(10)]
    assert waits == sorted(waits)
    gaps = [later - earlier for earlier, later in pairwise(waits)]
    assert all(gap == pytest.approx(0.12, abs=0.0015) for gap in gaps)


def test_the_longest_unchecked_job_goes_first(redis_client: redis.Redis, plan: PollPlan, clock: Clock) -> None:
    for job in ("a1", "b2", "c3"):
        plan.book("a", job, f"m-{job}", delay_s=0)
    order = []
    for _ in range(6):
        booked = {job: int(cast(float, redis_client.zscore(KEYS.poll_plan("a"), job))) for job in ("a1", "b2", "c3")}
        due = min(booked, key=booked.__getitem__)
        clock.ms = max(clock.ms, booked[due])
        assert turn(plan, due, f"m-{due}").code is TurnCode.GO
        order.append(due)
        plan.book("a", due, f"m-{due}", delay_s=0)  # still running: check again as soon as the budget allows
    assert order == ["a1", "b2", "c3", "a1", "b2", "c3"]


def test_a_second_message_for_a_job_stops_unless_the_owner_is_lost(plan: PollPlan, clock: Clock) -> None:
    wait = plan.book("a", "j1", "owner", delay_s=1.0)
    clock.ms += round(wait * 1000)
    assert turn(plan, "j1", "reconciler").code is TurnCode.DUPLICATE
    clock.ms += round(TAKEOVER_S * 1000) + 1
    assert turn(plan, "j1", "reconciler").code is TurnCode.GO  # the owner missed its slot by far
    plan.book("a", "j1", "reconciler", delay_s=1.0)
    clock.ms += 1000
    assert turn(plan, "j1", "owner").code is TurnCode.DUPLICATE  # the original, back late, stops


def test_an_early_run_waits_for_its_slot(plan: PollPlan) -> None:
    wait = plan.book("a", "j1", "m1", delay_s=2.0)
    early = turn(plan, "j1", "m1")
    assert early.code is TurnCode.WAIT
    assert early.wait_s == pytest.approx(wait)


def test_a_released_job_leaves_the_plan(redis_client: redis.Redis, plan: PollPlan) -> None:
    limiter = QuotaLimiter(redis_client, KEYS, [ACCOUNT])
    assert limiter.acquire_slot("j1").account == "a"
    plan.book("a", "j1", "m1", delay_s=1.0)
    limiter.release("a", "j1")
    assert redis_client.zscore(KEYS.poll_plan("a"), "j1") is None
    assert redis_client.hget(KEYS.poll_owners("a"), "j1") is None


def test_a_forgotten_booking_goes_to_the_next_message(plan: PollPlan, clock: Clock) -> None:
    plan.book("a", "j1", "silent", delay_s=1.0)
    plan.forget("a", "j1")  # the reconciler re-drives a silent poll
    assert turn(plan, "j1", "reconciler").code is TurnCode.GO  # booked afresh: the next slot, 40 ms away
    plan.book("a", "j1", "reconciler", delay_s=1.0)
    clock.ms += 1000
    assert turn(plan, "j1", "silent").code is TurnCode.DUPLICATE  # the silent one, back, stops
