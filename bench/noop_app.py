"""The baselines for bench/pipeline.py: raw Celery running the same message flow as ImagineQ.

Same configuration (queues, acks, prefetch, transport options) as the real app; each job is a
``submit`` that links ``chain(poll, store)``, exactly like ImagineQ's.

- Default: the tasks do nothing except count completions (``raw_celery``).
- ``BENCH_IO=1`` (``io_floor``): each task also makes the calls its ImagineQ step cannot do without, and
  nothing else — submit POSTs createTask to the simulator, poll GETs recordInfo once, store GETs the
  result and PUTs it and a JSON sidecar into S3 — with plain ``requests`` and boto3: no job record, no
  quota, no checks, no hashing. What ImagineQ runs beyond that is its own overhead.
"""

from __future__ import annotations

import json
import os
from functools import cache
from typing import Any

import boto3
import redis
import requests
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
IO = os.environ.get("BENCH_IO") == "1"


@cache
def _http() -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value() if settings.api_key else ''}"
    return session


@cache
def _s3() -> Any:
    return boto3.client(
        "s3",
        endpoint_url=settings.s3.endpoint_url,
        region_name=settings.s3.region,
        aws_access_key_id=settings.s3.access_key_id.get_secret_value() if settings.s3.access_key_id else None,
        aws_secret_access_key=settings.s3.secret_access_key.get_secret_value()
        if settings.s3.secret_access_key
        else None,
    )


def _upstream(path: str) -> str:
    return f"{settings.upstream_base_url.rstrip('/')}{path}"


@app.task(name="bench.submit")
def submit(job_id: str) -> str:
    task_id = ""
    if IO:
        body = {"model": "grok-imagine/text-to-video", "input": {"prompt": job_id, "aspect_ratio": "2:3"}}
        task_id = _http().post(_upstream("/api/v1/jobs/createTask"), json=body, timeout=10).json()["data"]["taskId"]
    chain(poll.si(job_id, task_id), store.s(job_id)).apply_async()
    return job_id


@app.task(name="bench.poll")
def poll(job_id: str, task_id: str) -> str:
    if IO:
        params = {"taskId": task_id}
        data = _http().get(_upstream("/api/v1/jobs/recordInfo"), params=params, timeout=10).json()["data"]
        return str(json.loads(data["resultJson"])["resultUrls"][0])
    return job_id


@app.task(name="bench.store")
def store(url: str, job_id: str) -> str:
    if IO:
        video = _http().get(url, timeout=10).content
        _s3().put_object(Bucket=settings.s3.bucket, Key=f"videos/{job_id}.mp4", Body=video, ContentType="video/mp4")
        sidecar = json.dumps({"id": job_id, "url": url}).encode()
        _s3().put_object(Bucket=settings.s3.bucket, Key=f"videos/{job_id}.json", Body=sidecar)
    _redis.incr(DONE_KEY)
    return job_id
