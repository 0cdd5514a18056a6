"""Redis's memory as a budget for new jobs.

Everything of a deployment lives in one Redis: the job records, the broker's queues, the quota logs, the
events. With ``maxmemory`` and ``noeviction`` (as it must be: an evicted quota entry is a broken promise)
a full Redis refuses writes, and a refused write half-way through a burst of new jobs would leave the
work in flight no room to finish. So new jobs are refused first: a call that creates jobs asks whether the
memory it needs fits under ``redis_memory_budget_pct`` of ``maxmemory`` and is refused whole
(:class:`~core.errors.RedisFull`) when it does not, before anything is written. The rest (``maxmemory``
less the budget) stays for the jobs already accepted, their messages and the quotas.

The need is estimated from the records themselves (:func:`record_bytes`, calibrated against Redis's own
accounting in ``tests/integration/test_redis_memory.py``), so a request of long prompts and large
metadata asks for more than a request of short ones.
"""

from __future__ import annotations

from typing import Any, Final, cast

import redis

from core.errors import RedisFull
from core.jobs import Job

#: What a job costs Redis besides its fields' bytes: the hash's own structures, its queued-index entry
#: and its submit message (a Celery envelope of about 1.3 KB), rounded up.
JOB_OVERHEAD_BYTES: Final = 2048
#: A hash stores each field and value with its own allocations: about twice their length, here.
FIELD_FACTOR: Final = 2


def record_bytes(job: Job) -> int:
    """About how many bytes of Redis memory a new job takes, message included."""
    fields = job.to_hash()
    return FIELD_FACTOR * sum(len(name) + len(value.encode()) for name, value in fields.items()) + JOB_OVERHEAD_BYTES


class MemoryBudget:
    """Refuses writes that would take Redis past ``pct`` % of its ``maxmemory`` (no limit without one)."""

    def __init__(self, client: redis.Redis, pct: float) -> None:
        self._redis = client
        self.pct = pct

    def check(self, wanted_bytes: int) -> None:
        """Raise :class:`RedisFull` when ``wanted_bytes`` more would not fit in the budget."""
        info = cast("dict[str, Any]", self._redis.info("memory"))
        maxmemory = int(info.get("maxmemory", 0) or 0)
        if maxmemory <= 0:
            return
        used = int(info.get("used_memory", 0))
        budget = int(maxmemory * self.pct / 100)
        if used + wanted_bytes > budget:
            raise RedisFull(used, budget, wanted_bytes)
