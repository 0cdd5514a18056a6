"""The worker consumer's rate limiting: one pending look per bucket, however many tasks wait."""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.asynchronous.timer import Timer
from kombu.utils.limits import TokenBucket

from workers.consumer import Consumer

# kombu ships no annotations for these.
new_timer: Any = Timer
new_bucket: Any = TokenBucket


def _bare(cls: type[Any]) -> Any:
    """A consumer with only what the bucket scheduling touches: a real kombu timer and token bucket."""
    consumer = object.__new__(cls)
    consumer.timer = new_timer()
    consumer._limit_order = 0
    consumer._bucket_looks = {}
    consumer.moved = []
    consumer._limit_move_to_pool = consumer.moved.append
    return consumer


def _arrive(consumer: Any, bucket: Any, count: int) -> None:
    for index in range(count):
        consumer._limit_task(f"request-{index}", bucket, 1)


def test_waiting_tasks_share_one_pending_look():
    consumer = _bare(Consumer)
    bucket = new_bucket(fill_rate=5, capacity=1)
    _arrive(consumer, bucket, 40)
    assert consumer.moved == ["request-0"]  # the bucket's one token
    assert len(consumer.timer.queue) == 1
    assert len(bucket.contents) == 39


def test_celery_consumer_adds_a_look_per_arrival():
    """The pile-up that made kombu's loop wait a second per turn (why workers/consumer.py exists)."""
    consumer = _bare(CeleryConsumer)
    bucket = new_bucket(fill_rate=5, capacity=1)
    _arrive(consumer, bucket, 40)
    assert len(consumer.timer.queue) == 39


def test_the_pending_look_moves_waiting_tasks_in_arrival_order():
    consumer = _bare(Consumer)
    bucket = new_bucket(fill_rate=1000, capacity=1)
    _arrive(consumer, bucket, 3)
    while bucket.contents:
        entry = consumer.timer.queue[0].entry
        consumer.timer.queue.clear()
        bucket._tokens = 1.0  # the token the look was scheduled for
        entry()
    assert consumer.moved == ["request-0", "request-1", "request-2"]


def test_a_lost_look_is_replaced_once_overdue():
    consumer = _bare(Consumer)
    bucket = new_bucket(fill_rate=5, capacity=1)
    _arrive(consumer, bucket, 2)
    consumer.timer.clear()  # a dropped broker connection clears the timer
    consumer._bucket_looks[id(bucket)] -= 60  # long overdue
    _arrive(consumer, bucket, 1)
    assert len(consumer.timer.queue) == 1
