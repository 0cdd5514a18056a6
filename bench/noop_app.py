"""The baseline for bench/pipeline.py: raw Celery running the same message flow with no-op tasks.

Same configuration (queues, acks, prefetch, transport options) as the real app; each job is a
``submit`` that links ``chain(poll, store)``, exactly like ImagineQ's, but the tasks do nothing except
count completions.
"""

from __future__ import annotations

import redis
from celery import Celery, chain

from config.celery import celery_config
from config.settings import get_settings

settings = get_settings()
app = Celery("noop")
app.conf.update(celery_config(settings))
app.conf.task_routes = {f"bench.{queue}": {"queue": queue} for queue in ("submit", "poll", "store")}
app.conf.task_annotations = {}
_redis = redis.Redis.from_url(settings.redis_url)
DONE_KEY = "bench:noop:done"


@app.task(name="bench.submit")
def submit(job_id: str) -> str:
    chain(poll.si(job_id), store.si(job_id)).apply_async()
    return job_id


@app.task(name="bench.poll")
def poll(job_id: str) -> str:
    return job_id


@app.task(name="bench.store")
def store(job_id: str) -> str:
    _redis.incr(DONE_KEY)
    return job_id
