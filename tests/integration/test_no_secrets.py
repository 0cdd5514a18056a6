"""No secret ever leaves a process: a real deployment (simulator, Redis, S3, Celery workers, the web process
with signed callbacks, Flower with basic auth) runs jobs with a distinctive API key, and then the key — and
the ingress token and HMAC key — are looked for in the worker and web logs, in every Redis value (Celery
messages decoded), in the job records, in Flower's task list and in ``imagineq status`` output.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from core.jobs import JobState
from devstack import services
from devstack.deployment import deployment, wait_until

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

API_KEY = f"sk-LEAKCHECK-{uuid.uuid4().hex}"
INGRESS_TOKEN = f"ingress-LEAKCHECK-{uuid.uuid4().hex}"
HMAC_KEY = f"hmac-LEAKCHECK-{uuid.uuid4().hex}"
SECRETS = (API_KEY, INGRESS_TOKEN, HMAC_KEY)
FLOWER_USER, FLOWER_PASSWORD = "ops", f"pw-{uuid.uuid4().hex[:12]}"
PROMPTS = ("A heron lifts off a misty lake", "Neon rain on a night market", "forbidden scene for moderation")
_BODY = re.compile(r'"body": "([A-Za-z0-9+/=]+)"')
_CALLBACK_TOKEN = re.compile(r"/v1/callbacks/[0-9a-f]{32}/[0-9a-f]{64}")


def redis_text(client: redis.Redis) -> str:
    """Every value in Redis as text, with the base64 bodies of Celery messages decoded and appended."""
    parts: list[str] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            parts.append(str(client.get(key)))
        elif kind == "list":
            parts += [str(item) for item in client.lrange(key, 0, -1)]  # type: ignore[union-attr]
        elif kind == "hash":
            parts += [f"{k}={v}" for k, v in client.hgetall(key).items()]  # type: ignore[union-attr]
        elif kind == "set":
            parts += [str(item) for item in client.smembers(key)]  # type: ignore[union-attr]
        elif kind == "zset":
            parts += [str(item) for item in client.zrange(key, 0, -1)]  # type: ignore[union-attr]
        parts.append(str(key))
    text = "\n".join(parts)
    bodies = [base64.b64decode(body).decode() for body in _BODY.findall(text)]
    return "\n".join([text, "-- decoded message bodies --", *bodies])


def message_args(text: str) -> list[list[Any]]:
    """The positional arguments of every Celery message in a :func:`redis_text` dump."""
    bodies = text.split("-- decoded message bodies --", 1)[1].splitlines()
    return [json.loads(body)[0] for body in bodies if body.strip()]


def test_no_secret_in_logs_messages_records_flower_or_status(tmp_path: Path) -> None:
    web_port, flower_port = services.free_port(), services.free_port()
    env = {
        "IMAGINEQ_API_KEY": API_KEY,
        "IMAGINEQ_LOG_FORMAT": "json",
        "IMAGINEQ_LOG_LEVEL": "DEBUG",  # the chattiest setting: urllib3, botocore, our upstream client
        "IMAGINEQ_CALLBACKS__PUBLIC_BASE_URL": f"http://127.0.0.1:{web_port}",
        "IMAGINEQ_CALLBACKS__HMAC_KEY": HMAC_KEY,
        "IMAGINEQ_INGRESS_TOKENS": json.dumps([INGRESS_TOKEN]),
    }
    simulator_args = (
        "--api-key",
        API_KEY,
        "--hmac-key",
        HMAC_KEY,
        "--gen-time",
        "1.0:2.0",
        "--video-bytes",
        "65536",
        "--callback-backoff-s",
        "0.2",
    )
    workers = {"submit": 1, "poll": 1, "store": 1}
    with deployment(tmp_path / "services", simulator_args=simulator_args, env=env, workers=workers) as dep:
        # Given: the web process exactly as the Procfile runs it (access log on), and Flower.
        web = dep.stack.spawn(
            "web",
            [sys.executable, "-m", "uvicorn", "producers.http:app", "--host", "127.0.0.1", "--port", str(web_port)],
            dep.env,
        )
        web.url = f"http://127.0.0.1:{web_port}"
        wait_until(lambda: services.http_ok(f"{web.url}/healthz"), 30, "web")
        flower = dep.start_flower(flower_port, FLOWER_USER, FLOWER_PASSWORD)

        # When: jobs come in through the Python API and the HTTP ingress, and run to the end.
        jobs = [dep.producer.enqueue(prompt) for prompt in PROMPTS[:2]]
        response = requests.post(
            f"{web.url}/v1/jobs",
            json={"prompt": PROMPTS[2]},
            headers={"Authorization": f"Bearer {INGRESS_TOKEN}"},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        job_ids = [job.id for job in jobs] + [response.json()["id"]]
        snapshots = [redis_text(dep.producer.redis)]  # the submit messages, still queued

        def finished() -> bool:
            snapshots.append(redis_text(dep.producer.redis))  # poll and store messages, as they come
            return all((job := dep.producer.get(i)) is not None and job.state.terminal for i in job_ids)

        wait_until(finished, 60, "every job to end")
        records = [dep.producer.get(job_id) for job_id in job_ids]
        states = [record.state if record else None for record in records]
        assert states == [JobState.STORED, JobState.STORED, JobState.FAILED]

        # Then: the job records and every Redis value, Celery messages decoded, hold no secret...
        snapshots.append(redis_text(dep.producer.redis))
        dumps = "\n".join(snapshots)
        for secret in SECRETS:
            assert secret not in dumps
            assert all(secret not in json.dumps(record.to_dict()) for record in records if record)
        # ...and every message's arguments are one job id (or none: the reconciler).
        args = [a for snapshot in snapshots for a in message_args(snapshot)]
        assert args and all(a in ([job_id] for job_id in job_ids) for a in args), args

        # Flower: 401 without (or with wrong) credentials; with them, the tasks by readable name, ids only.
        assert requests.get(f"{flower.url}/api/tasks", timeout=5).status_code == 401
        assert requests.get(f"{flower.url}/api/tasks", auth=(FLOWER_USER, "wrong"), timeout=5).status_code == 401
        tasks: dict[str, Any] = {}

        def flower_saw_every_step() -> bool:
            nonlocal tasks
            reply = requests.get(f"{flower.url}/api/tasks", auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=5)
            tasks = reply.json() if reply.status_code == 200 else {}
            # A chained step's arguments travel as JSON, so Flower shows them as a list: ['id'].
            seen = {(t["name"], repr(tuple(ast.literal_eval(t["args"])))) for t in tasks.values()}
            steps = [
                (f"imagineq.{step}", repr((job_id,))) for job_id in job_ids[:2] for step in ("submit", "poll", "store")
            ]
            return all(step in seen for step in steps)

        wait_until(flower_saw_every_step, 20, "flower to list every step of the stored jobs")
        assert {t["name"] for t in tasks.values()} <= {
            "imagineq.submit",
            "imagineq.poll",
            "imagineq.store",
            "imagineq.reconcile",
        }
        assert all(tuple(ast.literal_eval(t["args"])) in [(j,) for j in job_ids] + [()] for t in tasks.values())
        flower_text = json.dumps(tasks)
        assert not any(secret in flower_text for secret in SECRETS)
        assert not any(prompt in flower_text for prompt in PROMPTS)

        # imagineq status, as JSON and as the screen.
        outputs = []
        for extra in (["--json"], []):
            run = subprocess.run(
                [sys.executable, "-m", "producers.cli", "status", *extra],
                env={**dep.env, "PATH": "/usr/bin:/bin"},
                capture_output=True,
                text=True,
                timeout=60,
                cwd=tmp_path,
            )
            assert run.returncode == 0, run.stderr
            outputs += [run.stdout, run.stderr]  # stderr: the CLI's own log lines (DEBUG here)
        status = json.loads(outputs[0])
        assert status["accounts"][0]["credits"] is not None and status["jobs"]["stored"] == 2
        assert [f["job_id"] for f in status["failures"]] == [job_ids[2]]
        assert "default" in outputs[2] and job_ids[2] in outputs[2]
        assert not any(secret in output for secret in SECRETS for output in outputs)

        # The logs: JSON lines naming their job, no secret, no callback token (uvicorn logs the path).
        logs = {service.name: service.log_tail(100_000) for group in dep.workers.values() for service in group}
        logs["web"] = web.log_tail(100_000)
        for name, text in logs.items():
            assert not any(secret in text for secret in SECRETS), name
            assert not _CALLBACK_TOKEN.search(text), name
        lines = [json.loads(line) for text in logs.values() for line in text.splitlines() if line.startswith("{")]
        named = {line.get("job_id") for line in lines}
        assert set(job_ids) <= named
        assert any("/v1/callbacks/" in str(line["msg"]) for line in lines if line["logger"] == "uvicorn.access")


def test_flower_refuses_to_start_without_its_login_and_never_shows_it_in_ps(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINEQ_", "FLOWER_"))}
    argv = [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={services.free_port()}"]
    refused = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "set FLOWER_BASIC_AUTH=user:password" in refused.stderr
