import random

import pytest

from workers.schedule import MAX_POLL_DELAY_S, backoff_s, check_interval_s

UPSTREAM_SUGGESTION = [(30.0, 2.5), (120.0, 7.5), (float("inf"), 20.0)]


@pytest.mark.parametrize(
    ("age_s", "expected"),
    [(0.0, 2.5), (29.9, 2.5), (30.0, 7.5), (119.0, 7.5), (120.0, 20.0), (5000.0, 20.0)],
)
def test_check_interval_follows_the_schedule_steps(age_s, expected):
    assert check_interval_s(age_s, UPSTREAM_SUGGESTION) == expected


def test_check_interval_never_exceeds_the_countdown_cap():
    assert check_interval_s(10, [(5.0, 1.0), (10.0, 90.0)]) == MAX_POLL_DELAY_S


def test_backoff_grows_exponentially_within_jitter_and_cap():
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(60.0, 2 ** (attempt - 1))
        value = backoff_s(attempt, rng=rng)
        assert ceiling / 2 <= value <= ceiling
