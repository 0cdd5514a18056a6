"""Reading the broker's own lists: which jobs have a ``submit`` message waiting, or held by a worker.

kombu's Redis transport keeps a queue as one list per priority step, and a message a worker took (acks
late) in the ``unacked`` hash with its delivery time in ``unacked_index``. The reconciler reads both to
find queued jobs whose message was lost.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from typing import Any, Final, cast

import redis

from config.celery import TASK_SUBMIT
from core.keys import Keys

#: Messages read per LRANGE.
_SCAN: Final = 1000


def submit_job_id(message: Any) -> str | None:
    """The job id a kombu/Celery submit message carries (None for other tasks or unreadable bodies)."""
    try:
        if message.get("headers", {}).get("task") != TASK_SUBMIT:
            return None
        body = json.loads(base64.b64decode(message["body"]))
        return str(body[0][0])
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return None


def queued_submits(client: redis.Redis, lists: Sequence[str]) -> Iterator[str]:
    """The jobs of the submit messages waiting in ``lists``."""
    for key in lists:
        start = 0
        while raw := cast("list[str]", client.lrange(key, start, start + _SCAN - 1)):
            start += len(raw)
            for payload in raw:
                if (job_id := submit_job_id(json.loads(payload))) is not None:
                    yield job_id


def held_submits(client: redis.Redis, keys: Keys, live_since: float) -> Iterator[str]:
    """The jobs of the submit messages live workers hold (delivered since ``live_since``, seconds): an
    older delivery belongs to a worker that died (it comes back only after the visibility timeout)."""
    live = set(cast("list[str]", client.zrangebyscore(keys.broker_unacked_index(), live_since, "+inf")))
    for tag, value in cast("dict[str, str]", client.hgetall(keys.broker_unacked())).items():
        if tag not in live:
            continue
        message = json.loads(value)
        if isinstance(message, list) and message and (job_id := submit_job_id(message[0])) is not None:
            yield job_id
