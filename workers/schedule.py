"""Timing rules as pure functions: how soon a task may be asked about again, how long to back off."""

from __future__ import annotations

import random
from collections.abc import Sequence

#: Celery countdowns for polls never exceed this (ARCHITECTURE.md, "Polls").
MAX_POLL_DELAY_S = 30.0


def check_interval_s(age_s: float, schedule: Sequence[tuple[float, float]]) -> float:
    """The shortest wait before the next recordInfo for a task submitted ``age_s`` ago.

    ``schedule`` is a list of ``(until_s, interval_s)`` steps in increasing ``until_s`` order: at most
    every ``interval_s`` while the task is younger than ``until_s``; past the last step, its interval.
    """
    for until_s, interval_s in schedule:
        if age_s < until_s:
            return min(interval_s, MAX_POLL_DELAY_S)
    return min(schedule[-1][1], MAX_POLL_DELAY_S)


def backoff_s(
    attempt: int,
    *,
    base_s: float = 1.0,
    cap_s: float = 60.0,
    rng: random.Random | None = None,
) -> float:
    """Exponential backoff with full jitter (AWS style) for ``attempt`` ≥ 1."""
    ceiling = min(cap_s, base_s * (2 ** max(attempt - 1, 0)))
    return (rng or random).uniform(ceiling / 2, ceiling)
