"""Celery beat's scheduler: celery-redbeat's, made to ride out a Redis restart or a Sentinel failover.

redbeat retries its schedule reads and writes for ``retry_period``, but not the renewal of its lock: the
lock object talks to the plain client, so the first renewal after Redis went away raises and beat exits.
Here a renewal that cannot reach Redis skips that tick (nothing is sent while the lock is unconfirmed)
and is tried again shortly; a renewal that finds the lock gone (it expired during the outage, or a
failover lost it with the writes not yet replicated) waits to take the lock again, as a starting beat
does, so two beats never schedule at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import redis
from redbeat.schedulers import RedBeatScheduler
from redis.exceptions import LockError

from workers import liveness

log = logging.getLogger("imagineq.beat")

#: Seconds between tries while Redis cannot be reached.
OUTAGE_RETRY_S: Final = 1.0
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)


class Scheduler(RedBeatScheduler):  # type: ignore[misc]
    def tick(self, *args: Any, **kwargs: Any) -> float:
        liveness.touch()  # a tick that returns, even one that skips for a Redis outage, is a live beat
        try:
            return float(super().tick(*args, **kwargs))
        except UNREACHABLE as error:
            log.warning("beat: Redis unreachable (%s); trying again in %.0f s", error, OUTAGE_RETRY_S)
            return OUTAGE_RETRY_S
        except LockError:
            if self.lock is None:
                raise
            log.warning("beat: lost the lock while Redis was away; waiting to take it again")
            self._reacquire()
            return OUTAGE_RETRY_S

    def _reacquire(self) -> None:
        while True:
            try:
                self.lock.acquire()
                log.info("beat: Acquired lock")
                return
            except UNREACHABLE as error:
                log.warning("beat: Redis unreachable (%s) while taking the lock", error)
                time.sleep(OUTAGE_RETRY_S)
