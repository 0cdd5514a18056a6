"""Redis, tried as an attacker would: filling it with jobs, meeting it full part-way through a write, and
reading its password out of a worker's configuration. Real redis-servers with ``maxmemory`` (as
production's must have) and real Celery workers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import requests

from core.errors import RedisFull
from core.jobs import JobRequest
from core.jobstore import JobStore
from core.keys import Keys
from core.messages import submit_message
from devstack import services
from devstack.services import LocalStack

pytestmark = pytest.mark.integration

TOKEN = f"tenant-{uuid.uuid4().hex}"
#: 5,000 characters of 4 bytes each: the longest prompt there is, 20 KB.
HEAVY = "🦄" * 5000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with services.terminate_on_signals(), LocalStack(tmp_path_factory.mktemp("trust-redis")) as started:
        yield started


def everything(client: redis.Redis) -> dict[bytes, Any]:
    """Every key and its value, to compare before and after."""
    return {bytes(key): client.dump(key) for key in sorted(cast("list[bytes]", client.keys("*")))}


def test_a_burst_that_would_fill_redis_is_refused_whole_before_anything_is_written(stack: LocalStack):
    """A 600-job POST of the heaviest prompts, against a Redis of 16 MB: it answered 500 after writing
    490 jobs and their messages (counted nowhere); now 503 naming the budget, nothing written."""
    server = stack.add(services.start_redis(stack.log_dir, maxmemory="16mb"))
    principals = [{"name": "tenant", "token": TOKEN, "enqueue_burst": 1000}]
    env = {
        "IMAGINEQ_REDIS_URL": server.url,
        "IMAGINEQ_API_KEY": "sim-key",
        "IMAGINEQ_INGRESS_PRINCIPALS": json.dumps(principals),
    }
    web = services.start_web(stack, env)
    client = redis.Redis.from_url(server.url)
    before = everything(client)
    answer = requests.post(
        f"{web.url}/v1/jobs",
        data=json.dumps([{"prompt": HEAVY} for _ in range(600)], ensure_ascii=False).encode(),  # 12 MB
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        timeout=60,
    )
    assert answer.status_code == 503, answer.text
    assert (
        "Redis is full for new jobs" in answer.json()["detail"] and "redis_memory_budget_pct" in answer.json()["detail"]
    )
    assert int(answer.headers["Retry-After"]) > 0
    after = everything(client)
    assert {key: value for key, value in after.items() if b":principal:" not in bytes(key)} == {
        key: value for key, value in before.items() if b":principal:" not in bytes(key)
    }
    assert client.zcard("iq:principal:tenant:jobs") == 0  # the places taken were given back
    # A request that fits is taken as ever.
    fits = requests.post(
        f"{web.url}/v1/jobs",
        json=[{"prompt": HEAVY} for _ in range(20)],
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    assert fits.status_code == 201, fits.text


def test_a_write_that_meets_a_full_redis_part_way_is_taken_back_whole(stack: LocalStack):
    """No budget to stop it first (a store that skips the check): Redis refuses a write in the middle
    of the call, and every job the call had written is taken back, its message never pushed."""
    server = stack.add(services.start_redis(stack.log_dir, maxmemory="8mb"))
    client = redis.Redis.from_url(server.url, decode_responses=True)
    keys = Keys("iq")
    store = JobStore(client, keys, memory_budget_pct=None)
    before = everything(client)
    requests_ = [JobRequest(prompt=HEAVY, idempotency_key=f"key-{i}") for i in range(800)]
    with pytest.raises(redis.ResponseError, match="OOM"):
        store.create_many(requests_, chunk=100, message=lambda job: submit_message(job, keys=keys))
    assert everything(client) == before


def test_the_budget_refuses_what_the_store_would_write(stack: LocalStack):
    server = stack.add(services.start_redis(stack.log_dir, maxmemory="8mb"))
    client = redis.Redis.from_url(server.url, decode_responses=True)
    store = JobStore(client, Keys("iq"), memory_budget_pct=90)
    with pytest.raises(RedisFull) as refused:
        store.create_many([JobRequest(prompt=HEAVY) for _ in range(400)])
    assert refused.value.wanted_bytes > 400 * 20_000 and refused.value.budget_bytes == int(8 * 1024 * 1024 * 0.9)
    assert client.dbsize() == 0


def test_no_worker_configuration_shows_the_redis_password(stack: LocalStack, tmp_path: Path):
    """``celery inspect conf`` is Flower's worker Config tab: every key of every worker's configuration,
    which Celery censors by key name. The Redis URL sat in ``redbeat_redis_url``, uncensored."""
    password = f"pw-{uuid.uuid4().hex}"
    server = stack.add(services.start_redis(stack.log_dir, password=password))
    env = {
        "IMAGINEQ_REDIS_URL": server.url,
        "IMAGINEQ_API_KEY": "sim-key",
        "IMAGINEQ_UPSTREAM_BASE_URL": "http://127.0.0.1:9",  # never called: the worker only answers
    }
    worker = services.start_worker(stack, env, "poll", concurrency=1)
    try:
        shown = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "workers", "inspect", "conf", "--json", "--timeout", "10"],
            env=services.child_environment(env),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert shown.returncode == 0, shown.stderr
        conf = json.loads(shown.stdout)
        assert len(conf) == 1 and "broker_url" in next(iter(conf.values()))  # one worker answered, whole
        assert password not in shown.stdout and password not in shown.stderr
    finally:
        worker.stop()
