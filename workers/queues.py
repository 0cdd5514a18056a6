"""How deep the Celery queues are: waiting messages per queue and priority step, and held messages.

One pipelined read for ``/metrics`` and ``imagineq status`` alike. Messages a worker took (reserved,
running, or waiting for a poll countdown) leave their queue's list for the broker's ``unacked`` hash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import redis

from config.celery import PRIORITY_STEPS
from core.keys import Keys


@dataclass(frozen=True)
class QueueDepths:
    #: Queue → priority step → messages waiting in its list.
    waiting: dict[str, dict[int, int]]
    #: Messages held by workers, all queues together.
    held: int


def read_depths(
    client: redis.Redis, keys: Keys, queues: Iterable[str], steps: Sequence[int] = PRIORITY_STEPS
) -> QueueDepths:
    lists = [(queue, step) for queue in queues for step in steps]
    with client.pipeline(transaction=False) as pipe:
        for queue, step in lists:
            pipe.llen(keys.broker_queue(queue, step, steps))
        pipe.hlen(keys.broker_unacked())
        *sizes, held = pipe.execute()
    waiting: dict[str, dict[int, int]] = {}
    for (queue, step), size in zip(lists, sizes, strict=True):
        waiting.setdefault(queue, {})[step] = int(size)
    return QueueDepths(waiting, int(held))


def held_by_queue(client: redis.Redis, keys: Keys) -> dict[str, int]:
    """Held messages per queue: kombu stores each as ``[message, exchange, routing_key]``."""
    counts: dict[str, int] = {}
    for raw in cast("list[str]", client.hvals(keys.broker_unacked())):
        try:
            routing_key = json.loads(raw)[2]
        except (ValueError, IndexError, TypeError):
            routing_key = "?"
        counts[str(routing_key)] = counts.get(str(routing_key), 0) + 1
    return counts
