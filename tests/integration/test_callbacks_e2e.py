"""Callbacks end to end: simulator → real uvicorn web → Redis → real Celery workers → S3.

The workers get ``IMAGINEQ_CALLBACKS__PUBLIC_BASE_URL`` pointing at the web process, so every createTask
carries a per-job callBackUrl; the simulator signs its callbacks with the same HMAC key as the web.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import cast

import pytest
import requests

from core.jobs import JobState
from devstack import services
from devstack.deployment import Deployment, deployment, must, wait_until
from producers.web.callbacks import sign

pytestmark = pytest.mark.integration

HMAC_KEY = "e2e-hmac-key"
VIDEO_BYTES = 131072


@contextmanager
def callback_deployment(log_dir: Path, **poll: str) -> Iterator[tuple[Deployment, str]]:
    sock = services.reserve_port()  # the web takes it over: its URL is known now, and stays ours
    port = sock.getsockname()[1]
    env = {
        "IMAGINEQ_CALLBACKS__PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "IMAGINEQ_CALLBACKS__HMAC_KEY": HMAC_KEY,
        "IMAGINEQ_INGRESS_TOKENS": json.dumps(["e2e-token-0123456789abcdef"]),
        **{f"IMAGINEQ_POLL__{name.upper()}": value for name, value in poll.items()},
    }
    simulator_args = (
        "--gen-time",
        "0.3:0.8",
        "--video-bytes",
        str(VIDEO_BYTES),
        "--hmac-key",
        HMAC_KEY,
        "--callback-backoff-s",
        "0.2",
    )
    with deployment(log_dir, simulator_args=simulator_args, env=env) as dep:
        web = services.start_web(dep.stack, dep.env, sock=sock)
        yield dep, web.url


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, str]]:
    """Callbacks with a safety-net poll that first looks after 3 s, then every second."""
    with callback_deployment(tmp_path_factory.mktemp("callbacks"), safety_first_s="3", safety_interval_s="1") as d:
        yield d


@pytest.fixture
def dep(net: tuple[Deployment, str]) -> Iterator[Deployment]:
    deployed, _ = net
    yield deployed
    deployed.sim_config(drop_callbacks=False, delay_s=0, callback_duplicates=0.0)


def _record_info_calls(dep: Deployment, task_ids: list[str]) -> list[int]:
    per_task = dep.stats()["record_info_per_task"]
    return [per_task.get(task_id, 0) for task_id in task_ids]


def _counters(dep: Deployment) -> dict[str, int]:
    raw = cast("dict[str, str]", dep.producer.redis.hgetall(dep.producer.keys.counters()))
    return {name: int(value) for name, value in raw.items()}


def test_callbacks_complete_jobs_with_one_record_info_each_read_at_once(dep: Deployment):
    jobs = dep.producer.enqueue_many([{"prompt": f"A kite number {i} over the dunes"} for i in range(10)])
    done = dep.wait_all(jobs, timeout=60)
    assert all(job.state is JobState.STORED for job in done), [(j.state, j.error) for j in done]
    # The callback woke a poll, which read the record (and its result URL) from recordInfo: once.
    assert _record_info_calls(dep, [must(job.task_id) for job in done]) == [1] * 10
    assert _counters(dep)["callback:woken"] >= 10
    for job in done:  # well before the safety-net poll's first look at 3 s
        assert job.timestamps["downloading"] - job.timestamps["generating"] < 2.5


def test_a_failure_callback_fails_the_job_with_the_upstream_reason(dep: Deployment):
    job = dep.producer.wait(dep.producer.enqueue("a forbidden scene").id, timeout=60)
    assert job.state is JobState.FAILED and job.reason == "generation_failed"
    assert "forbidden" in (job.fail_msg or "")
    assert _record_info_calls(dep, [must(job.task_id)]) == [1]


def test_duplicate_deliveries_are_answered_and_ignored(dep: Deployment):
    dep.sim_config(callback_duplicates=1.0)

    def repeats() -> int:  # a re-signed delivery is a duplicate, the same signature again a replay
        counters = _counters(dep)
        return counters.get("callback:duplicate", 0) + counters.get("callback:replayed", 0)

    before = repeats()
    jobs = dep.wait_all(dep.producer.enqueue_many([{"prompt": f"twice told {i}"} for i in range(4)]), 60)
    assert all(job.state is JobState.STORED for job in jobs)
    wait_until(lambda: repeats() >= before + 4, 20, "the duplicates")
    assert dep.stats()["callbacks_failed"] == 0


def test_lost_callbacks_are_caught_by_the_safety_net_poll(dep: Deployment):
    dep.sim_config(drop_callbacks=True)
    jobs = dep.wait_all(dep.producer.enqueue_many([{"prompt": f"lost letter {i}"} for i in range(3)]), 60)
    assert all(job.state is JobState.STORED for job in jobs)
    calls = _record_info_calls(dep, [must(job.task_id) for job in jobs])
    # First look after safety_first_s (the task is long done by then): one call is enough.
    assert all(1 <= n <= 2 for n in calls), calls
    for job in jobs:
        assert job.timestamps["downloading"] - job.timestamps["generating"] >= 2.9


def test_a_callback_before_submit_recorded_the_task_id_still_completes_the_job(dep: Deployment):
    # The simulator creates the task, then holds createTask's answer 1.5 s: the task completes and its
    # callback arrives while the job is still submitting.
    dep.sim_config(delay_s=1.5)
    before = _counters(dep).get("callback:early", 0)
    job = dep.producer.enqueue("An impatient upstream")
    job = dep.producer.wait(job.id, timeout=60)
    assert job.state is JobState.STORED, (job.state, job.error)
    assert _counters(dep)["callback:early"] == before + 1
    assert _record_info_calls(dep, [must(job.task_id)]) == [1]  # asked at once, not after safety_first_s
    assert job.timestamps["downloading"] - job.timestamps["generating"] < 2.5


def test_the_web_answers_the_health_check_with_the_workers_it_saw(net: tuple[Deployment, str]):
    _, url = net
    wait_until(lambda: requests.get(f"{url}/healthz", timeout=5).json()["status"] == "ok", 30, "workers")


def test_callback_and_poll_racing_store_each_job_exactly_once(tmp_path: Path):
    # Polls every 0.2 s from the start, and every callback delivered twice: three actors per job race.
    with callback_deployment(tmp_path, safety_first_s="0.2", safety_interval_s="0.2") as (dep, _):
        dep.sim_config(callback_duplicates=1.0)
        jobs = dep.wait_all(dep.producer.enqueue_many([{"prompt": f"contested {i}"} for i in range(16)]), 90)
        assert all(job.state is JobState.STORED for job in jobs), [(j.state, j.error) for j in jobs]
        counters = _counters(dep)
        assert counters["bytes_stored"] == 16 * VIDEO_BYTES  # one upload per job
        assert dep.stats()["downloads"] == 16  # the result file was fetched once per job
        for job in jobs:
            bucket, key = must(job.s3_uri).removeprefix("s3://").split("/", 1)
            listed = dep.s3.list_objects_v2(Bucket=bucket, Prefix=key.removesuffix(".mp4"))
            assert sorted(o["Key"] for o in listed["Contents"]) == sorted([key, key.removesuffix(".mp4") + ".json"])
        logs = "".join(w.log_path.read_text(errors="replace") for w in dep.workers["store"] if w.log_path)
        assert all(logs.count(f"store: job {job.id} stored ") == 1 for job in jobs)
        assert sum(_record_info_calls(dep, [must(job.task_id) for job in jobs])) > 0  # polls did race


class _Attacker(BaseHTTPRequestHandler):
    hits = 0

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).hits += 1
        body = b"\x00\x00\x00\x18ftypmp42 not the video you asked for"
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_signed_callback_with_a_forged_body_cannot_choose_what_is_stored(dep: Deployment, net):
    """An attacker holding a valid (taskId, timestamp, signature) sends its own body first: a result URL
    of its choosing. The job is stored from the upstream's own record, and the attacker's server sees
    no request at all."""
    _, web_url = net
    attacker = ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        dep.sim_config(drop_callbacks=True)  # the real callback never comes: only the forged one
        job = dep.producer.enqueue("A heist film, the vault door swings open")
        wait_until(lambda: must(dep.producer.get(job.id)).task_id is not None, 30, "createTask")
        task_id = must(must(dep.producer.get(job.id)).task_id)
        [task] = [t for t in dep.sim("tasks")["tasks"] if t["taskId"] == task_id]
        wait_until(lambda: _sim_state(dep, task_id) == "success", 30, "the upstream to finish")
        timestamp = str(int(time.time()))
        forged = {
            "code": 200,
            "msg": "success",
            "data": {
                "taskId": task_id,
                "state": "success",
                "resultJson": json.dumps({"resultUrls": [f"http://127.0.0.1:{attacker.server_address[1]}/x.mp4"]}),
            },
        }
        headers = {"X-Webhook-Timestamp": timestamp, "X-Webhook-Signature": sign(HMAC_KEY.encode(), task_id, timestamp)}
        assert task["callBackUrl"].startswith(web_url)
        response = requests.post(task["callBackUrl"], json=forged, headers=headers, timeout=10)
        assert response.status_code == 200
        stored = dep.producer.wait(job.id, timeout=30)
        assert stored.state is JobState.STORED, (stored.state, stored.error)
        assert stored.sha256 == dep.expected_sha256(task_id)  # the upstream's file, byte for byte
        assert stored.result_url is not None and str(attacker.server_address[1]) not in stored.result_url
        assert _Attacker.hits == 0
        # Sent again, the same header pair is a replay: answered, counted, nothing done.
        replay = requests.post(task["callBackUrl"], json=forged, headers=headers, timeout=10)
        assert (replay.status_code, replay.json()["msg"]) == (200, "duplicate")
    finally:
        attacker.shutdown()
        attacker.server_close()


def _sim_state(dep: Deployment, task_id: str) -> str:
    return str(next(t["state"] for t in dep.sim("tasks")["tasks"] if t["taskId"] == task_id))
