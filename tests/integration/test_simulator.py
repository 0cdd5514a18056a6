"""The simulator over real HTTP: one subprocess per scenario, started on a free port."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests

from simulator.files import expected_sha256

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODEL = "grok-imagine/text-to-video"
READY = "simulator listening on "


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


@dataclass
class Sim:
    url: str
    proc: subprocess.Popen[str]
    key: str = "sim-key"
    http: requests.Session = field(default_factory=requests.Session)

    def _auth(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def create(self, prompt: str = "a cat surfing", key: str | None = None, **extra: Any) -> requests.Response:
        body: dict[str, Any] = {"model": MODEL, "input": {"prompt": prompt}, **extra}
        return requests.post(f"{self.url}/api/v1/jobs/createTask", json=body, headers=self._auth(key))

    def create_ok(self, prompt: str = "a cat surfing", **extra: Any) -> str:
        r = self.create(prompt, **extra)
        assert r.json()["code"] == 200, r.text
        task_id: str = r.json()["data"]["taskId"]
        return task_id

    def record(self, task_id: str, key: str | None = None) -> requests.Response:
        return self.http.get(f"{self.url}/api/v1/jobs/recordInfo", params={"taskId": task_id}, headers=self._auth(key))

    def wait_terminal(self, task_id: str, timeout: float = 10.0) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            data: dict[str, Any] = self.record(task_id).json()["data"]
            return data if data["state"] in ("success", "fail") else None

        # Asked 5 times a second: well inside the simulator's 10 recordInfo calls per rolling second.
        result: dict[str, Any] = wait_for(done, timeout, interval=0.2)
        return result

    def api(self, method: str, path: str, key: str | None = None, **kw: Any) -> requests.Response:
        return self.http.request(method, f"{self.url}{path}", headers=self._auth(key), **kw)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.http.get(f"{self.url}/__sim__/stats").json()
        return result

    def config(self, **changes: Any) -> requests.Response:
        return self.http.post(f"{self.url}/__sim__/config", json=changes)


def _stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=5)


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[Callable[..., Sim]]:
    """``sim_factory(*flags)`` starts ``python -m simulator --port 0 *flags`` and parses its address."""
    procs: list[subprocess.Popen[str]] = []

    def start(*flags: str, admin: bool = True) -> Sim:
        stderr_path = tmp_path / f"simulator-{len(procs)}.stderr"
        with stderr_path.open("w") as stderr:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "simulator",
                    "--port",
                    "0",
                    "--seed",
                    "7",
                    *(["--admin"] if admin else []),
                    *flags,
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith(READY):
            _stop(proc)
            raise AssertionError(f"simulator did not start: {line!r}\n{stderr_path.read_text()}")
        return Sim(url=line[len(READY) :].strip(), proc=proc)

    yield start
    for proc in procs:
        _stop(proc)


FAST = ("--gen-time", "0.2:0.4")


@pytest.fixture
def sim(sim_factory: Callable[..., Sim]) -> Sim:
    return sim_factory(*FAST, "--video-bytes", "200003")


# -- auth and validation ----------------------------------------------------------------------


def test_missing_or_wrong_key_is_401(sim: Sim) -> None:
    r = requests.post(f"{sim.url}/api/v1/jobs/createTask", json={"model": MODEL, "input": {"prompt": "x"}})
    assert r.status_code == 200 and r.json()["code"] == 401
    assert sim.create(key="wrong").json()["code"] == 401
    assert sim.api("GET", "/api/v1/chat/credit", key="wrong").json()["code"] == 401
    assert sim.stats()["errors_by_code"]["401"] == 3


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        ({"model": MODEL, "input": {}}, "input.prompt"),
        ({"model": MODEL, "input": {"prompt": ""}}, "input.prompt"),
        ({"model": MODEL, "input": {"prompt": "x" * 5001}}, "5000"),
        ({"model": MODEL, "input": {"prompt": "x", "aspect_ratio": "4:3"}}, "input.aspect_ratio"),
        ({"model": MODEL, "input": {"prompt": "x", "mode": "wild"}}, "input.mode"),
        ({"model": "grok-imagine/image", "input": {"prompt": "x"}}, "model"),
        ({"input": {"prompt": "x"}}, "model"),
        ({"model": MODEL}, "input"),
        ({"model": MODEL, "callBackUrl": "ftp://x/y", "input": {"prompt": "x"}}, "callBackUrl"),
    ],
)
def test_validation_errors_are_422_naming_the_field(sim: Sim, body: dict[str, Any], field_name: str) -> None:
    r = sim.api("POST", "/api/v1/jobs/createTask", json=body)
    assert r.json()["code"] == 422
    assert field_name in r.json()["msg"]


def test_invalid_json_is_422_and_limits_are_inclusive(sim: Sim) -> None:
    r = sim.api("POST", "/api/v1/jobs/createTask", data=b"{not json")
    assert r.json()["code"] == 422
    body = {"model": MODEL, "input": {"prompt": "x" * 5000, "aspect_ratio": "1:1", "mode": "spicy"}}
    assert sim.api("POST", "/api/v1/jobs/createTask", json=body).json()["code"] == 200


def test_record_info_not_found_other_key_and_missing_id(sim_factory: Callable[..., Sim]) -> None:
    sim = sim_factory(*FAST, "--api-key", "key-a", "--api-key", "key-b")
    task_id = sim.create(key="key-a").json()["data"]["taskId"]
    assert sim.record(task_id, key="key-a").json()["code"] == 200
    assert sim.record(task_id, key="key-b").json()["code"] == 404
    assert sim.record("0" * 32, key="key-a").json()["code"] == 404
    assert sim.api("GET", "/api/v1/jobs/recordInfo", key="key-a").json()["code"] == 422
    per_key = sim.stats()["per_key"]
    assert set(per_key) == {hashlib.sha256(k).hexdigest()[:10] for k in (b"key-a", b"key-b")}


# -- quotas, credits, maintenance, error styles ----------------------------------------------------


def _concurrent_creates(sim: Sim, n: int) -> list[requests.Response]:
    barrier = threading.Barrier(n)

    def one(i: int) -> requests.Response:
        barrier.wait()
        return sim.create(f"prompt {i}")

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_concurrent_creations_respect_in_progress_limit(sim_factory: Callable[..., Sim]) -> None:
    sim = sim_factory("--gen-time", "30:30", "--max-in-progress", "30")
    responses = _concurrent_creates(sim, 40)
    codes = sorted(r.json()["code"] for r in responses)
    assert codes.count(200) == 30 and codes.count(429) == 10
    for r in responses:
        if r.json()["code"] == 429:
            assert int(r.headers["Retry-After"]) >= 1
    stats = sim.stats()
    assert stats["peak_in_progress"] == 30
    assert stats["in_progress"] == 30
    assert stats["rate_limited"] == 10
    assert stats["create_calls"] == 40
    assert stats["created"] == 30


def test_creation_window_slides(sim_factory: Callable[..., Sim]) -> None:
    # 3 per 60 simulated seconds at time scale 30: a 2 s wall window.
    sim = sim_factory("--gen-time", "0:0", "--max-per-window", "3", "--window-s", "60", "--time-scale", "30")
    start = time.monotonic()
    for _ in range(3):
        sim.create_ok()
    limited = sim.create()
    assert limited.json()["code"] == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 2
    wait_for(lambda: sim.create().json()["code"] == 200, timeout=5, interval=0.05)
    assert time.monotonic() - start >= 1.8
    stats = sim.stats()
    assert stats["max_creations_in_window"] == 3
    assert stats["rate_limited"] >= 1


def test_credits_run_out_with_402(sim_factory: Callable[..., Sim]) -> None:
    # Two 6-second 480p clips (14.4 each) fit in 30 credits; a third does not.
    sim = sim_factory(*FAST, "--credits", "30")
    assert sim.api("GET", "/api/v1/chat/credit").json() == {"code": 200, "msg": "success", "data": 30}
    sim.create_ok()
    sim.create_ok()
    assert sim.create().json()["code"] == 402
    assert sim.api("GET", "/api/v1/chat/credit").json()["data"] == pytest.approx(1.2)
    sim.http.post(f"{sim.url}/__sim__/reset")
    assert sim.api("GET", "/api/v1/chat/credit").json()["data"] == 30


def test_unlimited_credits_report_a_large_number(sim: Sim) -> None:
    assert sim.api("GET", "/api/v1/chat/credit").json()["data"] >= 10**9


def test_maintenance_answers_455_everywhere_in_both_styles(sim_factory: Callable[..., Sim]) -> None:
    sim = sim_factory(*FAST, "--maintenance")
    r = sim.create(key="wrong")  # maintenance is checked before auth
    assert (r.status_code, r.json()["code"]) == (200, 455)
    assert sim.api("GET", "/api/v1/chat/credit").json()["code"] == 455
    assert sim.record("0" * 32).json()["code"] == 455
    sim.config(error_style="http")
    r = sim.create()
    assert (r.status_code, r.json()["code"]) == (455, 455)


def test_http_error_style_mirrors_status(sim_factory: Callable[..., Sim]) -> None:
    sim = sim_factory("--gen-time", "30:30", "--error-style", "http", "--max-in-progress", "1")
    assert sim.create(key="nope").status_code == 401
    assert sim.api("POST", "/api/v1/jobs/createTask", json={"model": MODEL}).status_code == 422
    ok = sim.create()
    assert ok.status_code == 200 and ok.json()["code"] == 200
    limited = sim.create()
    assert limited.status_code == 429 and limited.json()["code"] == 429
    assert int(limited.headers["Retry-After"]) >= 29
    assert sim.record("f" * 32).status_code == 404


def test_envelope_style_429_carries_retry_after(sim_factory: Callable[..., Sim]) -> None:
    sim = sim_factory("--gen-time", "5:5", "--max-in-progress", "1")
    sim.create_ok()
    r = sim.create()
    assert r.status_code == 200 and r.json()["code"] == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 5


# -- lifecycle and files ------------------------------------------------------------------------


def test_task_lifecycle_and_result_bytes(sim: Sim) -> None:
    body = {"model": MODEL, "input": {"prompt": "doors opening", "aspect_ratio": "3:2", "mode": "fun"}}
    task_id = sim.api("POST", "/api/v1/jobs/createTask", json=body).json()["data"]["taskId"]
    assert len(task_id) == 32 and int(task_id, 16) >= 0
    first = sim.record(task_id).json()["data"]
    assert first["state"] in ("waiting", "queuing", "generating")
    assert first["resultJson"] == "" and first["completeTime"] is None
    data = sim.wait_terminal(task_id)
    assert data["state"] == "success"
    assert json.loads(data["param"]) == body
    assert data["failCode"] == "" and data["failMsg"] == ""
    assert 200 <= data["costTime"] <= 400
    assert data["createTime"] < data["completeTime"] == data["updateTime"]
    (url,) = json.loads(data["resultJson"])["resultUrls"]

    head = requests.head(url)
    assert head.status_code == 200 and head.headers["Content-Length"] == "200003"
    r = requests.get(url, stream=True)
    assert r.headers["Content-Type"] == "video/mp4"
    assert r.headers["Content-Length"] == "200003"
    content = b"".join(r.iter_content(65536))
    assert len(content) == 200003
    assert content[4:8] == b"ftyp"
    digest = hashlib.sha256(content).hexdigest()
    assert digest == expected_sha256(task_id, 200003)
    assert sim.http.get(f"{sim.url}/__sim__/files/{task_id}/sha256").json()["sha256"] == digest
    stats = sim.stats()
    assert stats["downloads"] == 1 and stats["bytes_served"] == 200003
    assert stats["record_info_per_task"][task_id] == stats["record_info_calls"] >= 2


def test_fail_rate_one_fails_every_task(sim_factory: Callable[..., Sim]) -> None:
    sim = sim_factory(*FAST, "--fail-rate", "1.0")
    data = sim.wait_terminal(sim.create_ok())
    assert data["state"] == "fail"
    assert data["failCode"] == "500" and data["failMsg"]
    assert data["resultJson"] == ""


def test_moderation_word_fails_at_completion(sim: Sim) -> None:
    task_id = sim.create_ok("Something FORBIDDEN here")
    assert sim.record(task_id).json()["data"]["state"] != "fail"
    data = sim.wait_terminal(task_id)
    assert data["state"] == "fail"
    assert data["failCode"] == "content_moderation"
    assert "forbidden" in data["failMsg"]


def test_expired_url_is_403_and_download_url_refreshes_it(sim_factory: Callable[..., Sim]) -> None:
    sim = sim_factory(*FAST, "--url-ttl-s", "0.3", "--video-bytes", "1000")
    task_id = sim.create_ok()
    data = sim.wait_terminal(task_id)
    (url,) = json.loads(data["resultJson"])["resultUrls"]
    wait_for(lambda: requests.get(url).status_code == 403, timeout=5)
    fresh = sim.api("POST", "/api/v1/common/download-url", json={"url": url}).json()
    assert fresh["code"] == 200 and fresh["data"] != url
    r = requests.get(fresh["data"])
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == expected_sha256(task_id, 1000)
    unknown = url.replace(task_id, "0" * 32)
    assert sim.api("POST", "/api/v1/common/download-url", json={"url": unknown}).json()["code"] == 404
    assert sim.api("POST", "/api/v1/common/download-url", json={}).json()["code"] == 422
    assert requests.get(unknown).status_code == 404


# -- callbacks ----------------------------------------------------------------------------------


class Receiver:
    """A tiny callback endpoint: answers ``fail_first`` requests with 500, then 200."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.received: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver.lock:
                    receiver.received.append((dict(self.headers), body))
                    failing = receiver.fail_first > 0
                    receiver.fail_first -= 1
                self.send_response(500 if failing else 200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"code":200,"msg":"success"}')

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callback"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory() -> Iterator[Callable[..., Receiver]]:
    receivers: list[Receiver] = []

    def make(fail_first: int = 0) -> Receiver:
        receivers.append(Receiver(fail_first))
        return receivers[-1]

    yield make
    for r in receivers:
        r.close()


def test_signed_callback_verifies(sim_factory: Callable[..., Sim], receiver_factory: Callable[..., Receiver]) -> None:
    receiver = receiver_factory()
    sim = sim_factory(*FAST, "--hmac-key", "s3cret")
    ok_id = sim.create_ok(callBackUrl=receiver.url)
    fail_id = sim.create_ok("nsfw-test please", callBackUrl=receiver.url)
    wait_for(lambda: receiver.count() == 2, timeout=5)
    by_task = {body["data"]["taskId"]: (headers, body) for headers, body in receiver.received}
    for task_id, code, state in ((ok_id, 200, "success"), (fail_id, 501, "fail")):
        headers, body = by_task[task_id]
        timestamp = headers["X-Webhook-Timestamp"]
        assert abs(int(timestamp) - time.time()) < 30
        expected = base64.b64encode(
            hmac.new(b"s3cret", f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
        ).decode()
        assert headers["X-Webhook-Signature"] == expected
        assert body["code"] == code and body["data"]["state"] == state
    assert json.loads(by_task[ok_id][1]["data"]["resultJson"])["resultUrls"]
    assert by_task[fail_id][1]["data"]["failCode"] == "content_moderation"
    stats = wait_for(lambda: (s := sim.stats())["callbacks_delivered"] == 2 and s)
    assert stats["callbacks_sent"] == 2 and stats["callbacks_failed"] == 0


def test_callback_retried_after_failures(
    sim_factory: Callable[..., Sim], receiver_factory: Callable[..., Receiver]
) -> None:
    receiver = receiver_factory(fail_first=2)
    sim = sim_factory(*FAST, "--callback-retries", "3", "--callback-backoff-s", "0.05")
    task_id = sim.create_ok(callBackUrl=receiver.url)
    stats = wait_for(lambda: (s := sim.stats())["callbacks_delivered"] == 1 and s, timeout=5)
    assert stats["callbacks_sent"] == 3 and stats["callbacks_failed"] == 2
    assert receiver.count() == 3
    (task,) = sim.http.get(f"{sim.url}/__sim__/tasks").json()["tasks"]
    assert task["taskId"] == task_id and task["callback_status"] == "delivered"


def test_callback_abandoned_after_retries(
    sim_factory: Callable[..., Sim], receiver_factory: Callable[..., Receiver]
) -> None:
    receiver = receiver_factory(fail_first=100)
    sim = sim_factory(*FAST, "--callback-retries", "2", "--callback-backoff-s", "0.05")
    sim.create_ok(callBackUrl=receiver.url)
    stats = wait_for(lambda: (s := sim.stats())["callbacks_abandoned"] == 1 and s, timeout=5)
    assert stats["callbacks_sent"] == 3 and stats["callbacks_failed"] == 3
    assert stats["callbacks_delivered"] == 0


def test_callback_duplicates(sim_factory: Callable[..., Sim], receiver_factory: Callable[..., Receiver]) -> None:
    receiver = receiver_factory()
    sim = sim_factory(*FAST, "--callback-duplicates", "1.0")
    ids = {sim.create_ok(callBackUrl=receiver.url) for _ in range(3)}
    wait_for(lambda: receiver.count() == 6, timeout=5)
    assert sorted(b["data"]["taskId"] for _, b in receiver.received) == sorted([*ids, *ids])
    assert sim.stats()["callbacks_duplicated"] == 3


# -- run-time config and faults -----------------------------------------------------------------


def test_runtime_config_changes_take_effect(
    sim_factory: Callable[..., Sim], receiver_factory: Callable[..., Receiver]
) -> None:
    sim = sim_factory("--gen-time", "30:30")
    config = sim.config(max_in_progress=1, error_style="http", gen_time=[0.1, 0.1]).json()
    assert config["max_in_progress"] == 1 and config["gen_time"] == [0.1, 0.1]
    assert config["hmac_key"] is False and config["api_keys"] == 1  # no secrets shown
    sim.create_ok()
    assert sim.create().status_code == 429
    sim.config(max_in_progress=30, force_status={"code": 500, "count": 2, "endpoint": "createTask"})
    assert [sim.create().status_code for _ in range(3)] == [500, 500, 200]
    sim.config(force_status={"code": 429, "endpoint": "recordInfo"})
    limited = sim.record("0" * 32)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    sim.config(credits=0)
    assert sim.create().status_code == 402
    sim.config(credits=-1, drop_callbacks=True)
    receiver = receiver_factory()
    sim.create_ok(callBackUrl=receiver.url)
    wait_for(lambda: sim.stats()["callbacks_dropped"] == 1, timeout=5)
    assert receiver.count() == 0
    bad = sim.config(max_in_progress=-1)
    assert bad.status_code == 422 and "max_in_progress" in bad.json()["error"]
    assert sim.config(no_such_field=1).status_code == 422
    assert sim.http.get(f"{sim.url}/__sim__/config").json()["max_in_progress"] == 30


def test_reset_clears_tasks_and_stats(sim: Sim) -> None:
    task_id = sim.create_ok()
    sim.http.post(f"{sim.url}/__sim__/reset")
    assert sim.stats()["created"] == 0
    assert sim.record(task_id).json()["code"] == 404


def test_delay_fault_slows_answers(sim: Sim) -> None:
    sim.config(delay_s=0.3)
    start = time.monotonic()
    assert sim.api("GET", "/api/v1/chat/credit").json()["code"] == 200
    assert time.monotonic() - start >= 0.3


# -- capacity and process contract ----------------------------------------------------------------


def test_serves_200_concurrent_connections(sim: Sim) -> None:
    """200 clients hold a connection each at the same time (a 0.5 s delay keeps them all open)."""
    sim.config(delay_s=0.5)

    async def run() -> tuple[list[int], float]:
        connector = aiohttp.TCPConnector(limit=0)
        headers = {"Authorization": f"Bearer {sim.key}"}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def one() -> int:
                async with session.get(f"{sim.url}/api/v1/chat/credit") as r:
                    code: int = (await r.json())["code"]
                    return code

            start = time.monotonic()
            codes = await asyncio.gather(*(one() for _ in range(200)))
            return list(codes), time.monotonic() - start

    codes, elapsed = asyncio.run(run())
    assert codes == [200] * 200
    assert elapsed < 5  # served concurrently: 200 sequential answers would take 100 s


def test_sigterm_stops_cleanly(sim: Sim) -> None:
    sim.proc.send_signal(signal.SIGTERM)
    assert sim.proc.wait(timeout=5) == 0


def test_the_controls_are_off_unless_asked_for(sim_factory: Callable[..., Sim]) -> None:
    # The task list shows every job's callback URL (its per-job secret), so it is not served by default.
    plain = sim_factory(admin=False)
    for path in ("stats", "tasks", "config"):
        assert requests.get(f"{plain.url}/__sim__/{path}", timeout=5).status_code == 404
    assert requests.get(f"{sim_factory().url}/__sim__/stats", timeout=5).status_code == 200
