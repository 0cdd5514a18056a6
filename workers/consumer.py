"""The worker's consumer: Celery's, with a ``rate_limit`` that delivers the rate it is set to.

Celery holds a rate-limited task in a per-task token bucket (capacity 1) and, each time the bucket is
looked at without a token, adds a timer entry to look again when the next token is due. Every arriving
message looks at the bucket, so while tasks wait there the pending entries pile up, one per arrival,
all due at about the same moment. kombu's event loop fires at most 10 timer entries per turn and then,
when that limit was reached, waits its default second before the next turn. From then on the bucket
passes about one task per second, whatever its rate: measured with ``bench/rate_limit.py``, a worker
(``-c 4``, prefetch 1) set to ``30/s`` started 47 tasks at 30/s and every later one 1.006 s after the
one before (4.3/s over 60 tasks; ``-c 1`` never piles up and holds 29.6/s).

Here each bucket has at most one pending look, so the entries never pile up and the bucket delivers
its rate. A look that was lost (its timer entry cleared when the broker connection dropped) is
replaced once it is overdue.

It also reconnects to a lost broker sooner. Celery retries the connection 2 s after it broke, then 4 s
after that, 6 s, ... (kombu's defaults, which Celery passes no setting for): a Redis back after 2.5 s,
or a Sentinel failover promoted in 2.2 s, was reached only 6 s after the break (measured in the chaos
bench's ``redis_failover``). Here the tries start after 0.5 s and add 0.5 s each, up to 5 s apart.
"""

from __future__ import annotations

import functools
from time import monotonic
from typing import Any, Final

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.utils.limits import TokenBucket

#: A pending look this long overdue is taken as lost (its timer was cleared) and replaced.
LOST_LOOK_S = 1.0
#: Broker reconnection: the first try after this long, each next one this much later, at most this apart.
RECONNECT_INTERVALS: Final = {"interval_start": 0.5, "interval_step": 0.5, "interval_max": 5.0}


class Consumer(CeleryConsumer):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Per bucket, when its one pending look is due (monotonic seconds).
        self._bucket_looks: dict[int, float] = {}
        super().__init__(*args, **kwargs)

    def ensure_connected(self, conn: Any) -> Any:
        if not isinstance(conn.ensure_connection, functools.partial):
            conn.ensure_connection = functools.partial(conn.ensure_connection, **RECONNECT_INTERVALS)
        return super().ensure_connected(conn)

    def on_close(self) -> None:
        # The buckets are emptied here; a look cleared with the connection must not keep later
        # arrivals waiting for it.
        super().on_close()
        self._bucket_looks.clear()

    def _schedule_bucket_request(self, bucket: TokenBucket, scheduled: bool = False) -> None:
        if scheduled:
            self._bucket_looks.pop(id(bucket), None)
        elif (due := self._bucket_looks.get(id(bucket))) is not None and monotonic() < due + LOST_LOOK_S:
            return  # the pending look will move this request too, in arrival order
        while True:
            try:
                request, tokens = bucket.pop()  # type: ignore[no-untyped-call]
            except IndexError:
                return
            if bucket.can_consume(tokens):  # type: ignore[no-untyped-call]
                self._limit_move_to_pool(request)
                continue
            bucket.contents.appendleft((request, tokens))
            hold = bucket.expected_time(tokens)  # type: ignore[no-untyped-call]
            self._bucket_looks[id(bucket)] = monotonic() + hold
            self.timer.call_after(hold, self._schedule_bucket_request, (bucket, True))
            return
