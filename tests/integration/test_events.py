"""The events stream end to end: ``GET /v1/events`` over real HTTP and ``imagineq watch``, real workers."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
import redis
import requests

from core.jobs import JobState
from devstack import services
from devstack.deployment import Deployment, deployment, must, wait_until

pytestmark = pytest.mark.integration

ADMIN, TENANT = f"admin-{uuid.uuid4().hex}", f"acme-{uuid.uuid4().hex}"
PRINCIPALS = [{"name": "ops", "token": ADMIN, "admin": True}, {"name": "acme", "token": TENANT}]


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployment(
        tmp_path_factory.mktemp("events"), env={"IMAGINEQ_INGRESS_PRINCIPALS": json.dumps(PRINCIPALS)}
    ) as deployed:
        yield deployed


@pytest.fixture(scope="module")
def web(dep: Deployment) -> services.Service:
    return services.start_web(dep.stack, dep.env)


@dataclass
class Listener:
    """Reads ``/v1/events`` in a thread, as a client would, until closed."""

    response: requests.Response
    events: list[dict[str, Any]] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        kind, data, event_id = "message", "", None
        try:
            for line in self.response.iter_lines(decode_unicode=True):
                if line == ": connected":
                    self.connected.set()
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and data:
                    self.events.append({"event": kind, "id": event_id, **json.loads(data)})
                    kind, data, event_id = "message", "", None
        except (requests.RequestException, AttributeError, ValueError):
            pass  # closed by the test

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event"] == kind]

    def close(self) -> None:
        self.response.close()


def listen(web: services.Service, token: str, *, last_event_id: str | None = None, **params: str) -> Listener:
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    response = requests.get(f"{web.url}/v1/events", headers=headers, params=params, stream=True, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    listener = Listener(response)
    threading.Thread(target=listener.run, daemon=True).start()
    assert listener.connected.wait(15), "the stream never said it was connected"
    return listener


def test_every_job_that_ends_is_an_event_and_a_reconnect_resumes_without_a_gap(dep: Deployment, web: services.Service):
    listener = listen(web, ADMIN)
    first = dep.wait_all(dep.producer.enqueue_many([{"prompt": f"A kite, take {i}"} for i in range(3)]))
    wait_until(lambda: len(listener.of("job.stored")) == 3, 30, "three job.stored events")
    stored = listener.of("job.stored")
    assert {event["job_id"] for event in stored} == {job.id for job in first}
    assert all(event["job"]["state"] == "stored" and event["job"]["s3_uri"] for event in stored)
    listener.close()

    # While no one listens, two more jobs end, and one is canceled.
    for worker in dep.workers.pop("submit"):
        worker.stop()  # so the job to cancel stays queued
    canceled = dep.producer.enqueue("Canceled while no one listens")
    dep.producer.cancel(canceled.id, by="by the test")
    dep.start_worker("submit", concurrency=2)
    later = dep.wait_all(dep.producer.enqueue_many([{"prompt": f"A train, take {i}"} for i in range(2)]))

    resumed = listen(web, ADMIN, last_event_id=stored[-1]["id"])
    wait_until(lambda: len(resumed.events) >= 3, 30, "the events missed while away")
    missed = {(event["event"], event["job_id"]) for event in resumed.events}
    assert missed == {("job.canceled", canceled.id), *(("job.stored", job.id) for job in later)}
    resumed.close()


def test_a_tenant_gets_its_own_jobs_events_and_filters_narrow_them(dep: Deployment, web: services.Service):
    tenant = listen(web, TENANT)
    admin_one_job = None
    mine = requests.post(
        f"{web.url}/v1/jobs",
        json={"prompt": "A tenant's job"},
        headers={"Authorization": f"Bearer {TENANT}"},
        timeout=10,
    ).json()
    admin_one_job = listen(web, ADMIN, job=mine["id"])
    theirs = dep.producer.enqueue("Not the tenant's")
    dep.wait_all([theirs, must(dep.producer.get(mine["id"]))])
    wait_until(lambda: bool(tenant.events) and bool(admin_one_job.events), 30, "the tenant's job event")
    assert [event["job_id"] for event in tenant.events] == [mine["id"]]
    assert [event["job_id"] for event in admin_one_job.events] == [mine["id"]]
    tenant.close()
    admin_one_job.close()

    unauthorized = requests.get(f"{web.url}/v1/events", timeout=10)
    assert unauthorized.status_code == 401
    bad = requests.get(
        f"{web.url}/v1/events", headers={"Authorization": f"Bearer {ADMIN}", "Last-Event-ID": "yesterday"}, timeout=10
    )
    assert bad.status_code == 422


def test_imagineq_watch_prints_the_events_after_an_id(dep: Deployment):
    client = redis.Redis.from_url(dep.settings.redis_url, decode_responses=True)
    newest = cast("list[Any]", client.xrevrange(dep.producer.keys.events(), count=1))
    after = newest[0][0] if newest else "0-0"
    jobs = dep.wait_all(dep.producer.enqueue_many([{"prompt": f"Watched, take {i}"} for i in range(2)]))

    watched = dep.cli("watch", "--after", after, "--count", "2", "--json", timeout_s=60)

    assert watched.returncode == 0, watched.stderr
    lines = [json.loads(line) for line in watched.stdout.splitlines()]
    assert {line["job_id"] for line in lines} == {job.id for job in jobs}
    assert all(line["type"] == "job.stored" and line["job"]["state"] == JobState.STORED.value for line in lines)
    plain = dep.cli("watch", "--after", after, "--count", "1", timeout_s=60)
    assert plain.returncode == 0 and "job.stored" in plain.stdout and "s3://" in plain.stdout
