"""Signed outbound webhooks with real receivers: HTTP servers on loopback that verify every delivery with
the ``standardwebhooks`` library, real workers (a ``notify`` worker with its dispatcher), real Redis.

Targets other than loopback are never contacted: the one private address a test names
(``10.255.255.1``) is refused by the connection guard before any socket is opened, and a redirect to
the metadata address is never followed.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from core.jobs import JobState
from devstack import services
from devstack.deployment import Deployment, deployment, must, wait_until
from workers.notify.store import delivery_log
from workers.notify.targets import derived_secret

pytestmark = pytest.mark.integration


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


TENANT, ADMIN = f"acme-{uuid.uuid4().hex}", f"ops-{uuid.uuid4().hex}"
JOB_SECRET, TENANT_SECRET, ADMIN_SECRET = new_secret(), new_secret(), new_secret()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any]


@dataclass
class Receiver:
    """A webhook receiver: verifies each request's signature (the secret by path), records it, and
    answers as ``behaviour(path, count)`` says: a status, or a callable run before answering 200."""

    secrets_by_path: dict[str, str]
    port: int = 0
    received: list[Received] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    answers: dict[str, list[Any]] = field(default_factory=dict)
    server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                secret = receiver.secrets_by_path.get(self.path)
                try:
                    payload = Webhook(secret or new_secret()).verify(body, headers)
                except WebhookVerificationError as error:
                    receiver.rejected.append(f"{self.path}: {error}")
                    self.send_response(400)
                    self.end_headers()
                    return
                receiver.received.append(Received(self.path, headers, body, payload))
                answer = receiver.answers.get(self.path, [])
                step = answer.pop(0) if answer else 200
                if callable(step):
                    step()
                    step = 200
                self.send_response(step)
                if 300 <= step < 400:
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [item for item in self.received if item.path == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    # A tenant's own notify_url is signed with its secret, derived from the deployment's (its own path).
    secrets = {"/job": JOB_SECRET, "/acme-job": derived_secret(JOB_SECRET, "acme")}
    started = Receiver({**secrets, "/tenant": TENANT_SECRET, "/ops": ADMIN_SECRET}).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Deployment]:
    principals = [
        {
            "name": "acme",
            "token": TENANT,
            "webhooks": [{"url": receiver.url("/tenant"), "secret": TENANT_SECRET}],
            # The tenant's own notify_url may reach the receiver (loopback, its port) and nothing else.
            "notify_hosts": [f"127.0.0.1:{receiver.port}"],
            "notify_networks": ["127.0.0.0/8"],
        },
        {
            "name": "ops",
            "token": ADMIN,
            "admin": True,
            "webhooks": [{"url": receiver.url("/ops"), "secret": ADMIN_SECRET, "events": ["batch.completed"]}],
        },
    ]
    env = {
        "IMAGINEQ_INGRESS_PRINCIPALS": json.dumps(principals),
        "IMAGINEQ_NOTIFY__SIGNING_SECRET": JOB_SECRET,
        "IMAGINEQ_NOTIFY__ALLOW_NETWORKS": '["127.0.0.0/8"]',
        "IMAGINEQ_NOTIFY__TIMEOUT_S": "1",
        "IMAGINEQ_NOTIFY__BACKOFF_BASE_S": "0.2",
        "IMAGINEQ_NOTIFY__BACKOFF_MAX_S": "2",
        "IMAGINEQ_NOTIFY__BREAKER_FAILURES": "3",
        "IMAGINEQ_NOTIFY__BREAKER_OPEN_S": "1",
    }
    with deployment(tmp_path_factory.mktemp("webhooks"), env=env) as deployed:
        deployed.start_worker("notify", concurrency=4)
        yield deployed


@pytest.fixture(scope="module")
def web(dep: Deployment) -> services.Service:
    return services.start_web(dep.stack, dep.env)


def enqueue(web: services.Service, body: Any) -> Any:
    reply = requests.post(f"{web.url}/v1/jobs", json=body, headers={"Authorization": f"Bearer {TENANT}"}, timeout=10)
    assert reply.status_code == 201, reply.text
    return reply.json()


def deliveries(dep: Deployment, job_id: str) -> list[dict[str, Any]]:
    """The job's delivery log, read from Redis (polled often: the CLI shows the same, see the first test)."""
    return delivery_log(dep.producer.redis, dep.producer.keys, job_id)


def test_every_delivery_is_signed_and_verifies_and_is_logged_on_the_job(
    dep: Deployment, web: services.Service, receiver: Receiver
):
    plain = enqueue(web, {"prompt": "A heron lands on a jetty"})
    own_url = enqueue(web, {"prompt": "A heron takes off", "notify_url": receiver.url("/acme-job")})
    dep.wait_all([must(dep.producer.get(plain["id"])), must(dep.producer.get(own_url["id"]))])

    wait_until(lambda: len(receiver.at("/tenant")) >= 2 and bool(receiver.at("/acme-job")), 20, "three deliveries")
    assert not receiver.rejected, receiver.rejected
    tenant = {item.payload["data"]["job"]["id"]: item for item in receiver.at("/tenant")}
    assert set(tenant) >= {plain["id"], own_url["id"]}
    (mine,) = receiver.at("/acme-job")
    assert mine.payload["data"]["job"]["id"] == own_url["id"]
    for item in [*tenant.values(), mine]:
        assert item.payload["type"] == "job.stored" and item.payload["data"]["job"]["state"] == "stored"
        assert item.headers["webhook-id"].startswith("evt_") and item.headers["webhook-signature"].startswith("v1,")
        assert "secret" not in item.body.decode().lower()
    # The signature is real: the same body does not verify with another secret.
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(mine.body, mine.headers)

    def logged() -> bool:
        shown = requests.get(
            f"{web.url}/v1/jobs/{own_url['id']}", headers={"Authorization": f"Bearer {TENANT}"}, timeout=10
        ).json()
        return sorted(entry["endpoint"] for entry in shown["deliveries"] if entry["status"] == 200) == [
            "job",
            "principal:acme:0",
        ]

    wait_until(logged, 10, "both deliveries in GET /v1/jobs/{id}")
    shown = dep.cli("job", plain["id"], "--json")
    assert shown.returncode == 0, shown.stderr
    (entry,) = [e for e in json.loads(shown.stdout)["deliveries"] if e["event"] == "job.stored"]
    assert entry["status"] == 200 and entry["attempt"] == 1 and entry["latency_ms"] > 0
    assert "job.stored" in dep.cli("job", plain["id"]).stdout


@pytest.mark.chaos  # a fault scenario of a minute: run by make chaos (CI runs it after make test)
def test_a_receiver_down_for_60_s_gets_every_event_once_it_is_back(
    dep: Deployment, web: services.Service, receiver: Receiver
):
    port = receiver.port
    receiver.stop()
    down_at = time.monotonic()
    try:
        jobs = [enqueue(web, {"prompt": f"While the receiver is down, take {i}"}) for i in range(5)]
        dep.wait_all([must(dep.producer.get(job["id"])) for job in jobs])
        wait_until(lambda: all(deliveries(dep, job["id"]) for job in jobs), 60, "the failed first attempts")
        assert all(entry["status"] is None for job in jobs for entry in deliveries(dep, job["id"]))
        wait_until(lambda: time.monotonic() - down_at >= 60, 70, "60 s of the receiver being down")
        before = len(receiver.received)
    finally:
        receiver.port = port
        receiver.start()  # back, whatever happened: the next tests need it
    ids = {job["id"] for job in jobs}

    def all_arrived() -> bool:
        got = {item.payload["data"]["job"]["id"] for item in receiver.received[before:] if item.path == "/tenant"}
        return ids <= got

    wait_until(all_arrived, 60, "every event after the receiver came back")
    arrived = [item for item in receiver.received[before:] if item.payload["data"]["job"]["id"] in ids]
    once = {item.headers["webhook-id"]: item for item in arrived}  # what a receiver keeps after dedup
    assert sorted(item.payload["data"]["job"]["id"] for item in once.values()) == sorted(ids)
    assert not receiver.rejected


def test_500s_timeouts_redirects_and_private_addresses(dep: Deployment, web: services.Service, receiver: Receiver):
    receiver.secrets_by_path |= {"/flaky": JOB_SECRET, "/slow": JOB_SECRET, "/redirect": JOB_SECRET}
    receiver.answers["/flaky"] = [500, 500]
    receiver.answers["/slow"] = [lambda: time.sleep(2.5)]  # past the 1 s timeout once
    receiver.answers["/redirect"] = [302] * 1000
    flaky = dep.producer.enqueue("Flaky receiver", notify_url=receiver.url("/flaky"))
    slow = dep.producer.enqueue("Slow receiver", notify_url=receiver.url("/slow"))
    moved = dep.producer.enqueue("Redirecting receiver", notify_url=receiver.url("/redirect"))
    private = dep.producer.enqueue("Private receiver", notify_url="http://10.255.255.1:9/hook")
    dep.wait_all([flaky, slow, moved, private])

    def attempts(job_id: str) -> list[dict[str, Any]]:
        """The job's own endpoint's attempts (not the "held" notes of an open breaker, attempt 0)."""
        return [e for e in deliveries(dep, job_id) if e["endpoint"] == "job" and e["attempt"] > 0]

    def outcome(job_id: str, wanted: Callable[[list[dict[str, Any]]], bool]) -> Callable[[], bool]:
        return lambda: wanted(attempts(job_id))

    wait_until(outcome(flaky.id, lambda log: [e["status"] for e in log] == [500, 500, 200]), 60, "flaky: 2 × 500")
    wait_until(
        outcome(
            slow.id, lambda log: len(log) >= 2 and log[-1]["status"] == 200 and "Timeout" in (log[0]["error"] or "")
        ),
        60,
        "slow: a timeout, then delivered",
    )
    wait_until(outcome(moved.id, lambda log: len(log) >= 2), 60, "redirects retried")
    assert all(e["status"] == 302 and e["error"] == "redirect not followed" for e in attempts(moved.id))
    # Three failures open the breaker for 1 s, and the fourth attempt, due sooner, is held (noted once).
    wait_until(
        lambda: any(e["attempt"] == 0 and e["error"].startswith("held") for e in deliveries(dep, moved.id)),
        60,
        "the redirecting endpoint's breaker holding the delivery",
    )
    wait_until(outcome(private.id, lambda log: bool(log)), 60, "the private address refused")
    assert all(e["status"] is None and e["error"].startswith("refused before connecting") for e in attempts(private.id))
    assert not receiver.rejected


def test_a_notify_worker_killed_mid_delivery_delivers_after_it_comes_back(
    dep: Deployment, web: services.Service, receiver: Receiver
):
    arrived = threading.Event()
    receiver.secrets_by_path["/hang"] = JOB_SECRET

    def hang() -> None:
        arrived.set()
        time.sleep(3)  # past the 1 s timeout: the worker is killed while it waits for this answer

    receiver.answers["/hang"] = [hang]
    job = dep.producer.enqueue("Delivered across a crash", notify_url=receiver.url("/hang"))
    dep.wait_all([job])
    assert arrived.wait(60), "the first attempt never arrived"
    (worker,) = dep.workers.pop("notify")
    os.killpg(worker.process.pid, signal.SIGKILL)  # mid-request: its answer is never read
    worker.process.wait(timeout=10)
    dep.start_worker("notify", concurrency=4)

    def delivered() -> bool:
        return any(e["status"] == 200 for e in deliveries(dep, job.id) if e["endpoint"] == "job")

    wait_until(delivered, 60, "the delivery sent again by the new worker")
    ids = {item.headers["webhook-id"] for item in receiver.at("/hang")}
    assert len(receiver.at("/hang")) >= 2 and len(ids) == 1  # the same message, at least once
    assert must(dep.producer.get(job.id)).state is JobState.STORED


def test_a_batch_line_with_a_notify_url_and_the_batch_done_reach_their_endpoints(
    dep: Deployment, receiver: Receiver, tmp_path: Any
):
    lines = tmp_path / "evening.jsonl"
    lines.write_text(
        json.dumps({"prompt": "An evening tram", "notify_url": receiver.url("/job")})
        + "\n"
        + json.dumps({"prompt": "An evening ferry"})
        + "\n"
    )
    done = dep.cli("batch", "submit", str(lines), "--wait", "--json", timeout_s=120)
    assert done.returncode == 0, done.stdout + done.stderr
    batch_id = json.loads(done.stdout)["id"]

    def arrived() -> bool:
        ops = [item.payload for item in receiver.at("/ops")]
        line = [item.payload for item in receiver.at("/job") if item.payload["data"].get("batch_id") == batch_id]
        return any(p["type"] == "batch.completed" and p["data"]["batch_id"] == batch_id for p in ops) and bool(line)

    wait_until(arrived, 60, "batch.completed for the admin, job.stored for the line's notify_url")
    assert not receiver.rejected
