"""Outbound webhooks, tried as an attacker would: a receiver that drips its answer to hold the senders, a
tenant signing for another tenant's receiver or tripping its breaker, a tenant aiming at the operator's
networks. Real notify workers, real receivers on loopback; nothing else is ever connected to.

Jobs are written and canceled directly (no submit worker): a canceled job's event is delivered like any.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from core.jobs import JobRequest
from devstack import services
from devstack.deployment import Deployment, deployment, wait_until
from tests.integration.test_webhooks import Receiver, new_secret
from workers.notify.store import delivery_log
from workers.notify.targets import derived_secret

pytestmark = pytest.mark.integration

MASTER = new_secret()
HOOK_SECRET = new_secret()
TOKENS = {name: f"{name}-{uuid.uuid4().hex}" for name in ("acme", "mallory", "slowpoke", "plain")}
DEADLINE_S = 2


class DripServer:
    """Accepts connections and answers one byte of a 200 every 0.4 s (each byte resets a read timeout);
    counts the connections open at once."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.open = 0
        self.most_open = 0
        self.accepted = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with self._lock:
            self.open += 1
            self.accepted += 1
            self.most_open = max(self.most_open, self.open)
        try:
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" * 20:
                conn.sendall(bytes([byte]))
                time.sleep(0.4)
        except OSError:
            pass  # the sender gave up on us: what the test wants
        finally:
            conn.close()
            with self._lock:
                self.open -= 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    started = Receiver({"/acme-hook": HOOK_SECRET, "/acme-own": derived_secret(MASTER, "acme")}).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def drip() -> Iterator[DripServer]:
    server = DripServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver, drip: DripServer) -> Iterator[Deployment]:
    own = {"notify_hosts": [f"127.0.0.1:{receiver.port}"], "notify_networks": ["127.0.0.0/8"]}
    principals = [
        {
            "name": "acme",
            "token": TOKENS["acme"],
            "webhooks": [{"url": receiver.url("/acme-hook"), "secret": HOOK_SECRET}],
            **own,
        },
        {"name": "mallory", "token": TOKENS["mallory"], **own},
        {
            "name": "slowpoke",
            "token": TOKENS["slowpoke"],
            "notify_hosts": [f"127.0.0.1:{drip.port}"],
            "notify_networks": ["127.0.0.0/8"],
        },
        {"name": "plain", "token": TOKENS["plain"]},
    ]
    env = {
        "IMAGINEQ_INGRESS_PRINCIPALS": json.dumps(principals),
        "IMAGINEQ_NOTIFY__SIGNING_SECRET": MASTER,
        # The operator's receivers may be on loopback: a tenant's notify_url may not, unless its own say so.
        "IMAGINEQ_NOTIFY__ALLOW_NETWORKS": '["127.0.0.0/8"]',
        "IMAGINEQ_NOTIFY__TIMEOUT_S": "1",
        "IMAGINEQ_NOTIFY__ATTEMPT_DEADLINE_S": str(DEADLINE_S),
        "IMAGINEQ_NOTIFY__BACKOFF_BASE_S": "0.2",
        "IMAGINEQ_NOTIFY__BACKOFF_MAX_S": "2",
        "IMAGINEQ_NOTIFY__BREAKER_FAILURES": "3",
        "IMAGINEQ_NOTIFY__BREAKER_OPEN_S": "30",
    }
    with deployment(tmp_path_factory.mktemp("trust-webhooks"), env=env, workers={}) as deployed:
        deployed.start_worker("notify", concurrency=2)
        yield deployed


def canceled_job(dep: Deployment, owner: str, notify_url: str | None = None) -> str:
    """A job of ``owner``, canceled at once: its ``job.canceled`` event goes to its receivers."""
    job, _ = dep.producer.jobs.create(JobRequest(prompt=f"{owner}'s job", owner=owner, notify_url=notify_url))
    dep.producer.cancel(job.id, by="by the test")
    return job.id


def log(dep: Deployment, job_id: str) -> list[dict[str, Any]]:
    return delivery_log(dep.producer.redis, dep.producer.keys, job_id)


def test_a_receiver_that_drips_its_answer_holds_an_attempt_for_its_deadline_only(
    dep: Deployment, receiver: Receiver, drip: DripServer
):
    """Two deliveries to a dripping receiver with two notify processes: without a deadline on the whole
    attempt each held a process for the task's 90 s limit, was never logged nor counted by the breaker,
    and was sent again on another process once its lease lapsed, while other tenants' webhooks waited."""
    slow = [canceled_job(dep, "slowpoke", f"http://127.0.0.1:{drip.port}/hook") for _ in range(2)]
    wait_until(lambda: drip.accepted >= 2, 20, "both deliveries to reach the dripping receiver")
    other = canceled_job(dep, "acme")
    wait_until(
        lambda: any(item.payload["data"]["job"]["id"] == other for item in receiver.at("/acme-hook")),
        DEADLINE_S + 8,
        "another tenant's webhook, while the dripping receiver keeps answering",
    )

    def ended_at_the_deadline() -> bool:
        return all(
            any(e["attempt"] >= 1 and e["error"] == f"no complete answer within {DEADLINE_S} s" for e in log(dep, job))
            for job in slow
        )

    wait_until(ended_at_the_deadline, DEADLINE_S + 10, "the dripped attempts logged as failed at their deadline")
    assert not receiver.rejected
    assert drip.most_open <= 2  # each delivery sent by one process at a time, never again meanwhile


def test_a_tenant_cannot_sign_a_webhook_another_tenants_receiver_accepts(dep: Deployment, receiver: Receiver):
    shown = dep.cli("notify-secret", "acme")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == derived_secret(MASTER, "acme") != MASTER
    assert dep.cli("notify-secret", "mallory").stdout.strip() not in (shown.stdout.strip(), MASTER)

    acme = canceled_job(dep, "acme", receiver.url("/acme-own"))
    wait_until(lambda: bool(receiver.at("/acme-own")), 20, "acme's own webhook")
    assert receiver.at("/acme-own")[0].payload["data"]["job"]["id"] == acme
    rejected_before = len(receiver.rejected)
    canceled_job(dep, "mallory", receiver.url("/acme-own"))
    wait_until(lambda: len(receiver.rejected) > rejected_before, 20, "mallory's delivery to reach acme's receiver")
    assert all(item.payload["data"]["job"]["id"] == acme for item in receiver.at("/acme-own"))


def test_one_tenants_failures_at_a_receiver_never_hold_another_tenants_deliveries_there(
    dep: Deployment, receiver: Receiver
):
    """Mallory aims 6 jobs at acme's receiver, which refuses them (their signature is not acme's), each
    at a URL of its own: they all count against mallory's one breaker for that receiver, and acme's own
    delivery there goes out at once."""
    aimed = [canceled_job(dep, "mallory", receiver.url(f"/acme-own?try={i}")) for i in range(6)]
    wait_until(
        lambda: any(e["error"] and e["error"].startswith("held") for job_id in aimed for e in log(dep, job_id)),
        30,
        "mallory's breaker for acme's receiver to open (query strings make no new receiver)",
    )
    delivered_before = len(receiver.at("/acme-own"))
    acme = canceled_job(dep, "acme", receiver.url("/acme-own"))
    wait_until(lambda: len(receiver.at("/acme-own")) > delivered_before, 15, "acme's delivery")
    first = next(e for e in log(dep, acme) if e["endpoint"] == "job")
    assert first["attempt"] == 1 and first["status"] == 200  # never held by mallory's failures


def test_a_tenants_notify_url_reaches_only_its_own_hosts_and_networks(dep: Deployment, receiver: Receiver):
    web = services.start_web(dep.stack, dep.env)
    try:
        refused = requests.post(
            f"{web.url}/v1/jobs",
            json={"prompt": "aimed at the receiver's port", "notify_url": receiver.url("/acme-own")},
            headers={"Authorization": f"Bearer {TOKENS['plain']}"},
            timeout=10,
        )
        assert refused.status_code == 422
        (issue,) = refused.json()["detail"]
        assert issue["loc"] == ["body", "notify_url"] and "any host on ports 80 and 443" in issue["msg"]
    finally:
        web.stop()
    # Port 80 passes the host rule, but loopback is no network of plain's (the operator's allow_networks
    # are the operator's receivers'): refused before any connection is made.
    job_id = canceled_job(dep, "plain", "http://127.0.0.1/hook")
    wait_until(lambda: any(e["attempt"] >= 1 for e in log(dep, job_id)), 20, "plain's delivery attempt")
    attempts = [e for e in log(dep, job_id) if e["attempt"] >= 1]
    assert all(e["status"] is None and e["error"].startswith("refused before connecting") for e in attempts)
    assert "127.0.0.1" not in attempts[0]["error"]  # nothing said of what is behind the address
