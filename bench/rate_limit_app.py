"""A Celery app with ImagineQ's configuration and one rate-limited task, for bench/rate_limit.py.

``BENCH_RATE`` is the task's ``rate_limit``; ``BENCH_WORK_S`` how long each run takes (a createTask's
round trip, say); ``BENCH_TRANSPORT`` ``project`` (``workers.broker:Transport``) or ``redis`` (kombu's own);
``BENCH_CONSUMER`` ``project`` (``workers.consumer:Consumer``) or ``celery`` (Celery's own).
Each run appends its start time (Redis clock) to a list the bench reads.
"""

from __future__ import annotations

import os
import time
from typing import cast

import redis
from celery import Celery

from config.celery import celery_config
from config.settings import get_settings
from workers.broker import use_for_redis_urls

settings = get_settings()
if os.environ.get("BENCH_TRANSPORT") != "redis":
    use_for_redis_urls()
app = Celery("ratelimit")
app.conf.update(celery_config(settings))
if os.environ.get("BENCH_CONSUMER") == "celery":
    app.conf.worker_consumer = "celery.worker.consumer:Consumer"
app.conf.task_routes = {"bench.limited": {"queue": "submit"}}
app.conf.task_annotations = {"bench.limited": {"rate_limit": os.environ.get("BENCH_RATE") or None}}
_redis = redis.Redis.from_url(settings.redis_url)
STARTS_KEY = "bench:ratelimit:starts"
WORK_S = float(os.environ.get("BENCH_WORK_S", "0"))


@app.task(name="bench.limited")
def limited(index: int) -> int:
    seconds, micros = cast("tuple[int, int]", _redis.time())
    _redis.rpush(STARTS_KEY, f"{seconds}.{micros:06d}")
    if WORK_S:
        time.sleep(WORK_S)
    return index
