"""docker-compose.yml run for real (``make compose-test``; excluded from ``make test``).

A private Docker engine (Debian's docker.io, started and stopped by this test by its pid), stand-in
images built from Debian packages for the ones no registry can give here (devstack/compose_harness.py
says what each is built from), the app image built from the Dockerfile, and Compose v2 running a copy of
the compose file with the ``.env`` a user would write:

1. ``up`` with the ``dev`` profile (the simulator): every service healthy, jobs enqueued over HTTP with an
   ingress token are stored in the stack's S3 with the simulator's bytes, ``/metrics`` answers the ops
   token (and refuses without it);
2. ``down`` and ``up`` again: the jobs, the Redis data (AOF on its volume) and the S3 objects are kept;
3. the ``ha`` profile (a replica and three Sentinels, the app given the Sentinels): the Redis primary's
   container is stopped, the Sentinels promote the replica, and new jobs flow through it.

Everything (containers, networks, volumes, the engine) is torn down at the end, failed or not.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import requests

from devstack.compose_harness import APP_IMAGE, NETWORKS, ROOT, ComposeProject, Docker, standin_images, wait_for
from devstack.processes import free_port

pytestmark = [pytest.mark.compose, pytest.mark.timeout(3600)]

PROFILES = ("dev",)
HA_PROFILES = ("dev", "ha")
INGRESS = secrets.token_urlsafe(24)
OPS = secrets.token_urlsafe(24)
BUCKET = "imagineq-compose"
#: Generation takes 10-25 s in the simulator, then a poll and a store at production pace.
JOB_TIMEOUT_S = 240


class Stack:
    def __init__(
        self, project: ComposeProject, ports: dict[str, int], env: dict[str, str], settings: dict[str, str]
    ) -> None:
        self.project, self.ports, self.env, self.settings = project, ports, env, settings
        self.web = f"http://127.0.0.1:{ports['PORT']}"
        self.s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{ports['S3_PORT']}",
            region_name="us-east-1",
            aws_access_key_id=env["S3_ACCESS_KEY"],
            aws_secret_access_key=env["S3_SECRET_KEY"],
        )

    def up(self, profiles: tuple[str, ...]) -> None:
        self.project("up", "-d", "--no-build", "--wait", "--wait-timeout", "600", profiles=profiles, timeout=900)

    def enqueue(self, n: int, label: str) -> list[str]:
        body = [{"prompt": f"{label} {i}: a lighthouse at dusk"} for i in range(n)]
        response = requests.post(
            f"{self.web}/v1/jobs", json=body, headers={"Authorization": f"Bearer {INGRESS}"}, timeout=30
        )
        assert response.status_code == 201, response.text
        return [job["id"] for job in response.json()["jobs"]]

    def job(self, job_id: str) -> dict[str, Any]:
        response = requests.get(
            f"{self.web}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {INGRESS}"}, timeout=30
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_stored(self, job_ids: list[str]) -> list[dict[str, Any]]:
        def stored() -> bool:
            states = [self.job(job_id)["state"] for job_id in job_ids]
            assert not {"failed", "canceled", "rejected"} & set(states), states
            return set(states) == {"stored"}

        wait_for(stored, JOB_TIMEOUT_S, f"{len(job_ids)} jobs to be stored")
        return [self.job(job_id) for job_id in job_ids]

    def object_of(self, job: dict[str, Any]) -> dict[str, Any]:
        bucket, key = job["s3_uri"].removeprefix("s3://").split("/", 1)
        assert bucket == BUCKET
        return dict(self.s3.head_object(Bucket=bucket, Key=key))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("compose")
    docker = Docker(work)
    with docker.running():
        made = standin_images(docker)
        print("stand-ins:", *(f"{tag} <- {source}" for tag, source in made.items()), sep="\n  ")
        docker.build(ROOT, APP_IMAGE)  # the Dockerfile as it is, on the stand-in python:3.11-slim
        project = ComposeProject(docker, work / "project", "imagineq-compose-test")
        ports = {name: free_port() for name in ("PORT", "REDIS_PORT", "S3_PORT", "FLOWER_PORT", "SIMULATOR_PORT")}
        password = secrets.token_urlsafe(18)
        env = {
            "APP_IMAGE": APP_IMAGE,
            "REDIS_PASSWORD": password,
            "S3_ACCESS_KEY": "imagineq",
            "S3_SECRET_KEY": secrets.token_urlsafe(24),
            "IMAGINEQ_S3__BUCKET": BUCKET,
            "FLOWER_BASIC_AUTH": f"ops:{secrets.token_urlsafe(12)}",
            "IMAGINEQ_API_KEY": "sim-key",
            "IMAGINEQ_UPSTREAM_BASE_URL": "http://simulator:8900",
            "IMAGINEQ_INGRESS_TOKENS": f'["{INGRESS}"]',
            "IMAGINEQ_OPS_TOKENS": f'["{OPS}"]',
            **{name: str(port) for name, port in ports.items()},
        }
        # The simulator serves its result files from its compose address, in the engine's pools.
        settings = {"IMAGINEQ_DOWNLOADS__ALLOW_NETWORKS": f'["{NETWORKS}"]'}
        project.write_env(env, settings)
        try:
            yield Stack(project, ports, env, settings)
        finally:
            # What each container said last, for a failure's cause (the full logs go with the containers).
            print(project("logs", "--no-color", "--tail", "40", profiles=HA_PROFILES, check=False))
            project.down(HA_PROFILES, volumes=True)


def test_the_compose_file_runs_jobs_keeps_them_across_down_and_up_and_survives_losing_the_primary(
    stack: Stack,
) -> None:
    # 1. up: every service healthy (--wait), jobs end to end
    stack.up(PROFILES)
    containers = stack.project.services(PROFILES)
    states = {(c["Service"], c["Name"]): (c["State"], c["Health"]) for c in containers}
    expected = {"redis", "s3", "web", "submit", "poll", "store", "notify", "beat", "flower", "simulator"}
    assert {service for service, _ in states} == expected, states
    assert all(state == "running" for state, _ in states.values()), states
    assert {health for (service, _), (_, health) in states.items() if service in {"redis", "s3", "web"}} == {"healthy"}
    first = stack.wait_stored(stack.enqueue(3, "first"))
    objects = {job["id"]: stack.object_of(job) for job in first}
    for job in first:
        assert objects[job["id"]]["ContentLength"] == job["size"] > 0
    metrics = requests.get(f"{stack.web}/metrics", headers={"Authorization": f"Bearer {OPS}"}, timeout=30)
    assert metrics.status_code == 200 and 'imagineq_jobs{state="stored"} 3.0' in metrics.text, metrics.text[:500]
    assert requests.get(f"{stack.web}/metrics", timeout=30).status_code == 401

    # 2. down and up: the jobs, Redis's data and S3's objects are kept (named volumes)
    stack.project.down(PROFILES)
    assert stack.project.services(PROFILES) == []
    stack.up(PROFILES)
    for job in first:
        again = stack.job(job["id"])
        assert again["state"] == "stored" and again["s3_uri"] == job["s3_uri"]
        assert stack.object_of(again)["ETag"] == objects[job["id"]]["ETag"]
    stack.wait_stored(stack.enqueue(2, "after restart"))

    # 3. the ha profile: the app follows the Sentinels; the primary stops, the replica takes over
    sentinels = ";".join(
        f"sentinel://{':' + stack.env['REDIS_PASSWORD'] + '@' if i == 1 else ''}sentinel-{i}:26379" for i in (1, 2, 3)
    )
    stack.project.write_env({**stack.env, "REDIS_HA_URL": sentinels}, stack.settings)
    stack.up(HA_PROFILES)
    stack.wait_stored(stack.enqueue(2, "through the sentinels"))
    stopping = time.monotonic()
    stack.project("stop", "redis", profiles=HA_PROFILES)
    stopped_at = time.monotonic()
    # redis-server is PID 1 and got the SIGTERM itself: it wrote its AOF and exited 0 (137: SIGKILLed)
    primary = next(s for s in stack.project.services(HA_PROFILES) if s["Service"] == "redis")
    assert (primary["State"], primary["ExitCode"]) == ("exited", 0), primary
    ids: list[str] = []

    def accepted() -> bool:
        ids.extend(stack.enqueue(2, "after failover"))  # raises (retried) until the web takes them
        return True

    wait_for(accepted, 120, "the web to take jobs again through the promoted replica")
    stack.wait_stored(ids)
    print(
        f"COMPOSE failover: the primary took {stopped_at - stopping:.1f} s to stop; "
        f"jobs were accepted again {time.monotonic() - stopped_at:.1f} s after it had"
    )
