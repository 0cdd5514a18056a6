"""The web process as a real uvicorn server on a free port, against a private Redis (no workers).

Celery messages the web publishes stay in their Redis lists, where the tests read them.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import requests

from config.settings import load_settings
from core.jobs import JobRequest, JobState
from core.jobstore import JobStore
from core.keys import Keys
from core.quota import QuotaLimiter
from devstack import services
from devstack.deployment import must, settings_from
from devstack.processes import free_port
from devstack.services import LocalStack, Service
from producers.web.callbacks import sign, token_hash
from workers.storage import Storage

pytestmark = pytest.mark.integration

TOKENS = ("token-one-5f3a9c2e7b1d4086", "token-two-8e2b6d0f4a9c1357")
HMAC_KEY = "callback-hmac-key"
MAX_BODY = 2 * 1024 * 1024
AUTH = {"Authorization": f"Bearer {TOKENS[0]}"}
OPS_TOKEN = "ops-token-0123456789abcdef"
OPS = {"Authorization": f"Bearer {OPS_TOKEN}"}
#: Tenants: two plain ones, and two with small limits to flood.
PRINCIPALS: list[dict[str, Any]] = [
    {"name": "alice", "token": "alice-token-0123456789abcdef"},
    {"name": "bob", "token": "bob-token-0123456789abcdef"},
    {
        "name": "flood",
        "token": "flood-token-0123456789abcdef",
        "enqueue_per_s": 0.2,
        "enqueue_burst": 5,
        "max_metadata_bytes": 2000,
    },
    {"name": "hoarder", "token": "hoarder-token-0123456789abcdef", "max_live_jobs": 3},
]
STORE_LIST = "iq:celery:store"
POLL_LIST = "iq:celery:poll"
SUBMIT_LIST = "iq:celery:submit"


class Web:
    def __init__(self, service: Service, redis_url: str) -> None:
        self.service = service
        self.url = service.url
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        self.settings = load_settings(redis_url=redis_url, api_key="sim-key")
        self.keys = Keys("iq")
        self.jobs = JobStore(self.redis, self.keys)
        self.quota = QuotaLimiter(self.redis, self.keys, self.settings.accounts)

    def post(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("headers", AUTH)
        return requests.post(self.url + path, timeout=30, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("headers", AUTH)
        return requests.get(self.url + path, timeout=30, **kwargs)

    def generating_job(self, task_id: str, token: str = "per-job-secret") -> str:
        """A job as submit leaves it: a lease held, the token's hash and the taskId recorded."""
        job, _ = self.jobs.create(JobRequest(prompt="a callback test"))
        assert self.jobs.transition(job.id, JobState.SUBMITTING, expect=JobState.QUEUED)
        assert self.quota.acquire_slot(job.id).account == "default"
        self.jobs.update(
            job.id, expect=JobState.SUBMITTING, fields={"account": "default", "callback_token_hash": token_hash(token)}
        )
        assert self.jobs.transition(
            job.id, JobState.GENERATING, expect=JobState.SUBMITTING, fields={"task_id": task_id}
        )
        return job.id

    def callback(
        self,
        job_id: str,
        token: str,
        task_id: str,
        *,
        state: str = "success",
        code: int = 200,
        timestamp: int | None = None,
        key: str = HMAC_KEY,
        signature: str | None = None,
    ) -> requests.Response:
        data = {"taskId": task_id, "state": state, "completeTime": int(time.time() * 1000)}
        if state == "success":
            data["resultJson"] = json.dumps({"resultUrls": [f"http://files.invalid/{task_id}.mp4"]})
        else:
            data.update(failCode="500", failMsg="generator exploded")
        ts = str(int(time.time()) if timestamp is None else timestamp)
        headers = {
            "X-Webhook-Timestamp": ts,
            "X-Webhook-Signature": signature if signature is not None else sign(key.encode(), task_id, ts),
        }
        return requests.post(
            f"{self.url}/v1/callbacks/{job_id}/{token}",
            json={"code": code, "msg": "m", "data": data},
            headers=headers,
            timeout=10,
        )

    def poll_messages(self) -> list[tuple[str, dict[str, Any]]]:
        """(args, kwargs) of every poll message published, oldest first."""
        raw = cast("list[str]", self.redis.lrange(POLL_LIST, 0, -1))
        messages = [json.loads(message) for message in reversed(raw)]
        return [(m["headers"]["argsrepr"], json.loads(base64.b64decode(m["body"]))[1]) for m in messages]

    def store_messages(self) -> list[str]:
        raw = cast("list[str]", self.redis.lrange(STORE_LIST, 0, -1))
        return [json.loads(message)["headers"]["argsrepr"] for message in raw]

    def counters(self) -> dict[str, str]:
        return cast("dict[str, str]", self.redis.hgetall(self.keys.counters()))


@pytest.fixture(scope="module")
def web_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, Service, str]]:
    with LocalStack(tmp_path_factory.mktemp("web")) as stack:
        redis_url = stack.redis()
        # A real S3 server: batches submitted over HTTP keep their body in the bucket (and no request may
        # ever leave loopback for a default endpoint).
        s3 = stack.s3()
        env = {
            "IMAGINEQ_S3__ENDPOINT_URL": s3.url,
            "IMAGINEQ_S3__ACCESS_KEY_ID": s3.extra["access_key_id"],
            "IMAGINEQ_S3__SECRET_ACCESS_KEY": s3.extra["secret_access_key"],
            "IMAGINEQ_S3__BUCKET": "imagineq-http",
            "IMAGINEQ_S3__CREATE_BUCKET": "true",
            "IMAGINEQ_REDIS_URL": redis_url,
            "IMAGINEQ_API_KEY": "sim-key",
            "IMAGINEQ_INGRESS_TOKENS": json.dumps(TOKENS),
            "IMAGINEQ_INGRESS_PRINCIPALS": json.dumps(PRINCIPALS),
            "IMAGINEQ_INGRESS_MAX_BODY_BYTES": str(MAX_BODY),
            "IMAGINEQ_CALLBACKS__HMAC_KEY": HMAC_KEY,
            "IMAGINEQ_CALLBACKS__MAX_AGE_S": "300",
            "IMAGINEQ_OPS_TOKENS": json.dumps([OPS_TOKEN]),
            "IMAGINEQ_DOCS_ENABLED": "true",
            "IMAGINEQ_WEB_HEADER_TIMEOUT_S": "1",
            "IMAGINEQ_NOTIFY__SIGNING_SECRET": "whsec_dGVzdC1vbmx5LXNpZ25pbmctc2VjcmV0",
        }
        Storage(settings_from(env).s3, settings_from(env).http).ensure_bucket()
        yield stack, services.start_web(stack, env), redis_url


@pytest.fixture
def web(web_stack: tuple[LocalStack, Service, str]) -> Iterator[Web]:
    _, service, redis_url = web_stack
    client = Web(service, redis_url)
    client.redis.flushall()
    yield client
    client.redis.close()


# -- auth and limits --------------------------------------------------------------------------------------


def test_jobs_endpoints_need_one_of_the_configured_bearer_tokens(web: Web):
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic dG9rZW4tb25lOg=="},
        {"Authorization": f"Bearer {TOKENS[0]}x"},
    ):
        assert web.post("/v1/jobs", json={"prompt": "x"}, headers=headers).status_code == 401
        response = web.get("/v1/jobs", headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert web.redis.llen(SUBMIT_LIST) == 0
    for token in TOKENS:
        assert (
            web.post("/v1/jobs", json={"prompt": "x"}, headers={"Authorization": f"Bearer {token}"}).status_code == 201
        )


def test_callbacks_and_the_health_status_need_no_bearer_token(web: Web):
    assert web.post("/v1/callbacks/nojob/secret", json={}, headers={}).status_code == 404
    assert web.get("/healthz", headers={}).status_code == 200
    assert web.get("/openapi.json", headers={}).json()["paths"]["/v1/jobs"]  # enabled for this deployment


def test_metrics_and_health_details_need_an_ops_token(web: Web):
    for headers in ({}, AUTH, {"Authorization": "Bearer not-the-ops-token"}):
        assert web.get("/metrics", headers=headers).status_code == 401  # an ingress token is not enough
        assert web.get("/healthz", headers=headers).json() == {"status": "degraded"}  # no worker names
    assert web.get("/metrics", headers=OPS).status_code == 200
    assert web.get("/healthz", headers=OPS).json() == {"status": "degraded", "redis": True, "workers": []}


def test_docs_page_loads_swagger_ui_from_the_web_itself(web: Web):
    page = web.get("/docs", headers={})
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert sources, page.text
    for source in sources:
        assert source.startswith("/"), f"{source} is not served by the web (a private network reaches no CDN)"
        asset = web.get(source, headers={})
        assert asset.status_code == 200 and asset.content, source
    assets = {source.rsplit("/", 1)[-1] for source in sources}
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "openapi.json"} <= assets


def test_docs_and_schema_are_off_unless_enabled(web_stack: tuple[LocalStack, Service, str]):
    stack, _, redis_url = web_stack
    plain = services.start_web(stack, {"IMAGINEQ_REDIS_URL": redis_url, "IMAGINEQ_API_KEY": "sim-key"})
    for path in ("/docs", "/docs/assets/swagger-ui-bundle.js", "/redoc", "/openapi.json"):
        assert requests.get(plain.url + path, timeout=10).status_code == 404
    plain.stop()


def test_a_request_whose_headers_trickle_in_is_cut_off(web: Web):
    host, port = web.url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        closed = False
        while time.monotonic() - started < 8:
            try:
                sock.sendall(b"X-Drip: 1\r\n")
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
    assert closed, "the connection was still open after 8 s of trickled headers"
    assert time.monotonic() - started < 4  # the header deadline is 1 s here


def test_a_body_over_the_limit_is_refused_with_413_declared_or_streamed(web: Web):
    big = json.dumps({"prompt": "x" * (MAX_BODY + 10)})
    assert web.post("/v1/jobs", data=big, headers={**AUTH, "Content-Type": "application/json"}).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"x" * 65536

    response = web.post("/v1/jobs", data=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 413
    assert web.post("/v1/callbacks/a/b", data=big, headers={}).status_code == 413
    assert web.redis.llen(SUBMIT_LIST) == 0


# -- enqueue, read, list, cancel --------------------------------------------------------------------------


def test_a_thousand_jobs_in_one_post(web: Web):
    items = [{"prompt": f"scene {i}", "metadata": {"line": i}} for i in range(1000)]
    started = time.monotonic()
    response = web.post("/v1/jobs", json=items)
    elapsed = time.monotonic() - started
    assert response.status_code == 201, response.text
    jobs = response.json()["jobs"]
    assert len(jobs) == 1000 and all(job["created"] and job["state"] == "queued" for job in jobs)
    assert [job["metadata"]["line"] for job in jobs] == list(range(1000))
    assert web.redis.llen(SUBMIT_LIST) == 1000
    assert web.jobs.count_by_state()[JobState.QUEUED] == 1000
    print(f"1,000-job POST took {elapsed:.2f}s")
    assert web.post("/v1/jobs", json=[*items, {"prompt": "one too many"}]).status_code == 422


def test_one_bad_item_refuses_the_whole_list_naming_the_field(web: Web):
    items = [{"prompt": "fine"}, {"prompt": "fine too"}, {"prompt": "x", "aspect_ratio": "4:3"}]
    response = web.post("/v1/jobs", json=items)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", 2, "aspect_ratio"]
    # A check only JobRequest makes (metadata size) is reported the same way.
    response = web.post("/v1/jobs", json=[{"prompt": "a"}, {"prompt": "b", "metadata": {"x": "y" * 17000}}])
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", 1, "metadata"]
    cases = [
        ({"prompt": "   "}, ["body", "prompt"]),
        ({"prompt": "a", "colour": "red"}, ["body", "colour"]),
        ({"aspect_ratio": "1:1"}, ["body", "prompt"]),
    ]
    for body, loc in cases:
        response = web.post("/v1/jobs", json=body)
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == loc
    assert web.redis.llen(SUBMIT_LIST) == 0
    assert sum(web.jobs.count_by_state().values()) == 0


def test_idempotency_keys_from_the_header_or_the_field(web: Web):
    first = web.post("/v1/jobs", json={"prompt": "once"}, headers={**AUTH, "Idempotency-Key": "order-7"})
    again = web.post("/v1/jobs", json={"prompt": "once"}, headers={**AUTH, "Idempotency-Key": "order-7"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and again.json()["created"] is False
    by_field = web.post(
        "/v1/jobs",
        json=[{"prompt": "a", "idempotency_key": "order-7"}, {"prompt": "b"}],
        headers={**AUTH, "Idempotency-Key": "list-1"},
    )
    jobs = by_field.json()["jobs"]
    assert jobs[0]["id"] == first.json()["id"] and not jobs[0]["created"]
    assert jobs[1]["idempotency_key"] == "list-1:1" and jobs[1]["created"]
    assert web.redis.llen(SUBMIT_LIST) == 2


def test_get_one_job_and_404(web: Web):
    created = web.post("/v1/jobs", json={"prompt": "find me", "mode": "fun"}).json()
    job = web.get(f"/v1/jobs/{created['id']}").json()
    assert (job["prompt"], job["mode"], job["state"]) == ("find me", "fun", "queued")
    assert "callback_token_hash" not in job and "extra" not in job
    assert web.get("/v1/jobs/0123456789abcdef").status_code == 404


def test_listing_pages_through_a_state_and_filters_by_batch(web: Web):
    ids = [
        job["id"]
        for job in web.post(
            "/v1/jobs", json=[{"prompt": f"p{i}", "batch_id": "nightly" if i % 3 == 0 else None} for i in range(25)]
        ).json()["jobs"]
    ]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"state": "queued", "limit": 7, **({"cursor": cursor} if cursor else {})}
        page = web.get("/v1/jobs", params=params).json()
        assert len(page["jobs"]) <= 7
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 25
    batch = web.get("/v1/jobs", params={"batch": "nightly", "limit": 100}).json()
    assert {job["id"] for job in batch["jobs"]} == {ids[i] for i in range(0, 25, 3)}
    assert batch["next_cursor"] is None
    assert web.get("/v1/jobs", params={"state": "stored"}).json() == {"jobs": [], "next_cursor": None}


def test_cancel_a_queued_job_but_not_one_already_submitted(web: Web):
    job_id = web.post("/v1/jobs", json={"prompt": "never mind"}).json()["id"]
    response = requests.delete(f"{web.url}/v1/jobs/{job_id}", headers=AUTH, timeout=10)
    assert response.status_code == 200 and response.json()["state"] == "canceled"
    assert requests.delete(f"{web.url}/v1/jobs/{job_id}", headers=AUTH, timeout=10).status_code == 200
    busy = web.generating_job("task-cancel")
    response = requests.delete(f"{web.url}/v1/jobs/{busy}", headers=AUTH, timeout=10)
    assert response.status_code == 409
    assert response.json()["state"] == "generating" and "can no longer be canceled" in response.json()["detail"]
    assert requests.delete(f"{web.url}/v1/jobs/nope", headers=AUTH, timeout=10).status_code == 404


# -- callbacks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "code"), [("success", 200), ("fail", 501)])
def test_a_callback_wakes_a_poll_and_applies_nothing_of_its_body(web: Web, state, code):
    job_id = web.generating_job("task-ok")
    before = must(web.jobs.get(job_id))
    response = web.callback(job_id, "per-job-secret", "task-ok", state=state, code=code)
    assert response.status_code == 200 and response.json() == {"code": 200, "msg": "success"}
    # The job waits for the woken poll's recordInfo: nothing of the body reached the record.
    job = must(web.jobs.get(job_id))
    assert job.state is JobState.GENERATING and job.updated_at == before.updated_at
    assert job.result_url is None and job.fail_code is None
    # The task ended upstream (only the upstream holds the job's callback secret): its slot is free at once.
    assert web.quota.snapshot()[0].in_progress == 0
    assert web.poll_messages() == [(repr((job_id,)), {"woken": True})]
    assert web.store_messages() == []
    assert "files.invalid" not in json.dumps(web.redis.hgetall(web.keys.job(job_id)))
    assert web.counters()["callback:woken"] == "1"


def test_a_redelivered_callback_answers_200_and_wakes_nothing_more(web: Web):
    job_id = web.generating_job("task-dup")
    signed_at = int(time.time())
    assert web.callback(job_id, "per-job-secret", "task-dup", timestamp=signed_at).status_code == 200
    # The upstream's retry signs a new timestamp: accepted, but the poll is already woken.
    response = web.callback(job_id, "per-job-secret", "task-dup", timestamp=signed_at - 1)
    assert response.status_code == 200 and response.json()["code"] == 200
    assert len(web.poll_messages()) == 1
    assert web.counters()["callback:duplicate"] == "1"


def test_a_replayed_signature_changes_nothing_whatever_the_body(web: Web):
    job_id = web.generating_job("task-replay")
    ts = int(time.time())
    assert web.callback(job_id, "per-job-secret", "task-replay", timestamp=ts).status_code == 200
    web.redis.delete(web.keys.callback_wake(job_id))  # even with the first wake-up long over
    before = must(web.jobs.get(job_id))
    for state, code in (("success", 200), ("fail", 501)):  # the same header pair, other bodies
        response = web.callback(job_id, "per-job-secret", "task-replay", timestamp=ts, state=state, code=code)
        assert (response.status_code, response.json()) == (200, {"code": 200, "msg": "duplicate"})
    assert must(web.jobs.get(job_id)).updated_at == before.updated_at
    assert len(web.poll_messages()) == 1
    assert web.counters()["callback:replayed"] == "2"


def test_a_signed_callback_about_another_task_gives_no_slot_back(web: Web):
    # The job's slot goes back as soon as a signed callback says the job's own task ended, before the
    # replay and wake-up checks: one about any other task (or one still running) leaves it taken
    job_id = web.generating_job("task-mine")
    assert web.callback(job_id, "per-job-secret", "task-other").status_code == 200
    assert web.callback(job_id, "per-job-secret", "task-mine", state="generating", code=200).status_code == 200
    assert web.quota.snapshot()[0].in_progress == 1
    assert web.poll_messages() == []
    assert web.callback(job_id, "per-job-secret", "task-mine").status_code == 200
    assert web.quota.snapshot()[0].in_progress == 0


def test_a_callback_nested_too_deeply_is_a_400(web: Web):
    job_id = web.generating_job("task-deep")
    deep = b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = web.post(f"/v1/callbacks/{job_id}/per-job-secret", data=deep, headers={})
    assert response.status_code == 400 and response.json() == {"code": 400, "msg": "body is nested too deeply"}


@pytest.mark.parametrize(
    ("change", "status", "outcome"),
    [
        ({"token": "guessed-secret"}, 403, "bad_token"),
        ({"key": "forged-key"}, 401, "bad_signature"),
        ({"signature": ""}, 401, "bad_signature"),
        ({"timestamp": int(time.time()) - 301}, 401, "stale"),
        ({"timestamp": int(time.time()) + 3600}, 401, "stale"),
    ],
)
def test_refused_callbacks_change_nothing(web: Web, change, status, outcome):
    job_id = web.generating_job("task-x")
    token = change.pop("token", "per-job-secret")
    response = web.callback(job_id, token, "task-x", **change)
    assert response.status_code == status
    assert must(web.jobs.get(job_id)).state is JobState.GENERATING
    assert web.quota.snapshot()[0].in_progress == 1
    assert web.poll_messages() == [] and web.store_messages() == []
    assert web.counters()[f"callback:{outcome}"] == "1"


def test_a_callback_for_an_unknown_job_is_404(web: Web):
    assert web.callback("0" * 32, "per-job-secret", "task-y").status_code == 404


def test_a_callback_before_submit_recorded_the_task_id_leaves_submit_a_wake_marker(web: Web):
    from workers.completion import take_wake

    job, _ = web.jobs.create(JobRequest(prompt="fast upstream"))
    web.jobs.transition(job.id, JobState.SUBMITTING, expect=JobState.QUEUED)
    web.quota.acquire_slot(job.id)
    web.jobs.update(
        job.id, expect=JobState.SUBMITTING, fields={"account": "default", "callback_token_hash": token_hash("tok")}
    )
    response = web.callback(job.id, "tok", "task-early")
    assert response.status_code == 200
    assert must(web.jobs.get(job.id)).state is JobState.SUBMITTING
    assert web.counters()["callback:early"] == "1"
    assert web.poll_messages() == []  # submit publishes the poll, with the marker it takes
    # What submit does right after createTask answers:
    web.jobs.transition(job.id, JobState.GENERATING, expect=JobState.SUBMITTING, fields={"task_id": "task-early"})
    assert take_wake(web.redis, web.keys, job.id) == "task-early"
    assert take_wake(web.redis, web.keys, job.id) is None  # one taker only


# -- health, metrics, OpenAPI -----------------------------------------------------------------------------


def test_healthz_reports_redis_and_workers(web: Web):
    body = web.get("/healthz", headers=OPS).json()
    assert body == {"status": "degraded", "redis": True, "workers": []}  # no worker runs in this module


def test_livez_answers_while_redis_is_away_and_healthz_does_not(web_stack: tuple[LocalStack, Service, str]):
    """A liveness probe restarts the process: it must not fail for Redis being away (a restart mends
    nothing), while the readiness probe (/healthz) must, so a load balancer stops sending it jobs."""
    stack, _, _ = web_stack
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # a loopback port no server listens on
    env = {"IMAGINEQ_REDIS_URL": nobody, "IMAGINEQ_API_KEY": "sim-key", "IMAGINEQ_INGRESS_TOKENS": json.dumps(TOKENS)}
    service = services.start_web(stack, env, ready_path="/livez")
    try:
        assert requests.get(f"{service.url}/livez", timeout=10).json() == {"status": "ok"}
        assert requests.get(f"{service.url}/healthz", timeout=10).status_code == 503
    finally:
        service.stop()


def test_metrics_read_the_deployment_state_from_redis(web: Web):
    web.post("/v1/jobs", json=[{"prompt": "a"}, {"prompt": "b", "priority": "batch"}])
    web.redis.hset(
        web.keys.counters(),
        mapping={"upstream_error:429": 3, "record_info_calls": 17, "bytes_stored": 1048576, "reconcile:poll_silent": 2},
    )
    web.callback("nojob", "x", "t")
    text = web.get("/metrics", headers=OPS).text
    for line in (
        'imagineq_jobs{state="queued"} 2.0',
        'imagineq_queue_depth{priority="0",queue="submit"} 1.0',
        'imagineq_queue_depth{priority="9",queue="submit"} 1.0',
        'imagineq_account_creations_limit{account="default",pool="text-to-video"} 300.0',
        'imagineq_account_in_progress_limit{account="default",pool="text-to-image"} 50.0',
        'imagineq_account_in_progress_limit{account="default",pool="text-to-video"} 30.0',
        'imagineq_account_cooldown_remaining_seconds{account="default"} 0.0',
        'imagineq_upstream_errors_total{code="429"} 3.0',
        "imagineq_record_info_calls_total 17.0",
        "imagineq_bytes_stored_total 1.048576e+06",
        'imagineq_callbacks_total{outcome="unknown_job"} 1.0',
        'imagineq_reconciled_total{case="poll_silent"} 2.0',
    ):
        assert line in text, line


def test_schemathesis_finds_no_server_error_and_no_schema_violation(web: Web, tmp_path: Path):
    """Every check but ``use_after_free``: DELETE cancels a job, whose record stays readable on purpose; and
    ``positive_data_acceptance``: a job may name things no schema can vouch for (a parent job, an object
    of the bucket, a file part of the same request, an image that must be a real image), so a schema-valid
    job may rightly be refused (422, naming the field). ``GET /v1/events`` is left out: its answer is a
    stream that never ends (test_events.py covers it)."""
    argv = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{web.url}/openapi.json",
        "-H",
        f"Authorization: Bearer {TOKENS[0]}",
        "--checks",
        "all",
        "--exclude-checks",
        "use_after_free,positive_data_acceptance",
        "--exclude-path",
        "/v1/events",
        "-n",
        "60",
        "--seed",
        "1",
        "--no-color",
        "--generation-database",
        "none",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    summary = result.stdout[result.stdout.rfind("SUMMARY") :]
    print(summary)
    assert result.returncode == 0, result.stdout[-6000:]


def test_a_cr_lf_job_id_on_the_callback_route_is_refused_and_forges_no_log_line(web: Web):
    forged = "x%0A2026-12-01%2010:00:00,000%20INFO%20imagineq.http%20[MainProcess]%20FORGED-RECORD"
    response = web.post(f"/v1/callbacks/{forged}/per-job-secret", json={}, headers={})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "job_id"]
    log = web.service.log_tail(100_000)
    assert not any(line.startswith("2026-12-01 10:00:00,000") for line in log.splitlines())


# -- tenants -------------------------------------------------------------------------------------------


def as_(name: str) -> dict[str, str]:
    [token] = [str(p["token"]) for p in PRINCIPALS if p["name"] == name]
    return {"Authorization": f"Bearer {token}"}


def test_a_tenant_sees_and_cancels_only_its_own_jobs(web: Web):
    alices = web.post("/v1/jobs", json={"prompt": "alice's secret project", "metadata": {"c": 1}}, headers=as_("alice"))
    assert alices.status_code == 201 and alices.json()["owner"] == "alice"
    job_id = alices.json()["id"]

    # Bob cannot read it, find it in a list, or cancel it: to him it does not exist.
    assert web.get(f"/v1/jobs/{job_id}", headers=as_("bob")).status_code == 404
    assert web.get("/v1/jobs", headers=as_("bob")).json() == {"jobs": [], "next_cursor": None}
    assert web.get("/v1/jobs?state=queued", headers=as_("bob")).json()["jobs"] == []
    refused = requests.delete(f"{web.url}/v1/jobs/{job_id}", headers=as_("bob"), timeout=30)
    assert refused.status_code == 404 and refused.json() == {"detail": f"job {job_id} not found"}
    assert must(web.jobs.get(job_id)).state is JobState.QUEUED

    # Alice and an admin do see it.
    assert web.get(f"/v1/jobs/{job_id}", headers=as_("alice")).json()["metadata"] == {"c": 1}
    assert [j["id"] for j in web.get("/v1/jobs", headers=as_("alice")).json()["jobs"]] == [job_id]
    assert web.get(f"/v1/jobs/{job_id}").json()["owner"] == "alice"  # AUTH: a plain token, the admin


def test_idempotency_keys_belong_to_their_tenant(web: Web):
    alice = web.post("/v1/jobs", json={"prompt": "a"}, headers={**as_("alice"), "Idempotency-Key": "order-1"})
    bob = web.post("/v1/jobs", json={"prompt": "b"}, headers={**as_("bob"), "Idempotency-Key": "order-1"})
    again = web.post("/v1/jobs", json={"prompt": "a"}, headers={**as_("alice"), "Idempotency-Key": "order-1"})
    assert (alice.status_code, bob.status_code, again.status_code) == (201, 201, 200)
    assert alice.json()["id"] != bob.json()["id"] and again.json()["id"] == alice.json()["id"]
    assert bob.json()["prompt"] == "b"  # bob never got alice's job back through her key


def test_a_flood_from_one_tenant_is_refused_with_the_limit_named(web: Web):
    def queued() -> int:
        return int(web.redis.zcard(web.keys.state_index("queued")))  # type: ignore[arg-type]

    heavy = [{"prompt": "p", "metadata": {"blob": "x" * 700}} for _ in range(3)]
    response = web.post("/v1/jobs", json=heavy, headers=as_("flood"))
    assert response.status_code == 413
    assert "max_metadata_bytes" in response.json()["detail"] and "2000" in response.json()["detail"]
    response = web.post("/v1/jobs", json=[{"prompt": "p"}] * 6, headers=as_("flood"))
    assert response.status_code == 429 and "enqueue_burst" in response.json()["detail"]
    assert queued() == 0  # nothing of a refused request was written

    assert web.post("/v1/jobs", json=[{"prompt": "p"}] * 5, headers=as_("flood")).status_code == 201
    response = web.post("/v1/jobs", json={"prompt": "one more"}, headers=as_("flood"))
    assert response.status_code == 429 and "enqueue_per_s" in response.json()["detail"]
    assert int(response.headers["Retry-After"]) >= 1
    assert queued() == 5
    # Another tenant is not slowed down by it.
    assert web.post("/v1/jobs", json={"prompt": "unaffected"}, headers=as_("alice")).status_code == 201


def test_a_tenant_may_hold_only_so_many_unfinished_jobs(web: Web):
    ids = [web.post("/v1/jobs", json={"prompt": f"h{i}"}, headers=as_("hoarder")).json()["id"] for i in range(3)]
    response = web.post("/v1/jobs", json={"prompt": "h3"}, headers=as_("hoarder"))
    assert response.status_code == 429 and "max_live_jobs" in response.json()["detail"]
    # One of them finishes (canceled): room for one more.
    assert requests.delete(f"{web.url}/v1/jobs/{ids[0]}", headers=as_("hoarder"), timeout=30).status_code == 200
    assert web.post("/v1/jobs", json={"prompt": "h3"}, headers=as_("hoarder")).status_code == 201


def test_an_idempotency_key_over_http_and_the_python_api_names_two_jobs(web: Web):
    from core.errors import ValidationError
    from producers.api import Producer

    producer = Producer(web.settings, client=web.redis)
    by_api = producer.enqueue("from the API", idempotency_key="order-7")
    by_http = web.post("/v1/jobs", json={"prompt": "over HTTP"}, headers={**AUTH, "Idempotency-Key": "order-7"})
    # An ingress principal's keys are its own (even the admin's): two callers, two jobs.
    assert by_http.status_code == 201 and by_http.json()["id"] != by_api.id
    assert producer.enqueue("again", idempotency_key="order-7").id == by_api.id
    again = web.post("/v1/jobs", json={"prompt": "again"}, headers={**AUTH, "Idempotency-Key": "order-7"})
    assert again.status_code == 200 and again.json()["id"] == by_http.json()["id"]

    # The keys of batch lines are theirs alone: nobody else may name one.
    with pytest.raises(ValidationError, match="idempotency_key: must not start with 'batch:'"):
        producer.enqueue("x", idempotency_key="batch:b123:line:1")
    refused = web.post("/v1/jobs", json={"prompt": "x", "idempotency_key": "batch:b123:line:1"})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "idempotency_key"]


def test_a_notify_url_is_refused_naming_the_field_when_bad_or_when_no_secret_signs_it(
    web: Web, web_stack: tuple[LocalStack, Service, str]
):
    bad = web.post("/v1/jobs", json={"prompt": "x", "notify_url": "ftp://hooks.example/imagineq"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "notify_url"]
    accepted = web.post("/v1/jobs", json={"prompt": "x", "notify_url": "https://hooks.example/imagineq"})
    assert accepted.status_code == 201 and accepted.json()["notify_url"] == "https://hooks.example/imagineq"

    stack, _, redis_url = web_stack
    env = {
        "IMAGINEQ_REDIS_URL": redis_url,
        "IMAGINEQ_API_KEY": "sim-key",
        "IMAGINEQ_INGRESS_TOKENS": json.dumps(TOKENS),
    }
    unsigned = services.start_web(stack, env)
    refused = requests.post(
        f"{unsigned.url}/v1/jobs",
        json={"prompt": "x", "notify_url": "https://hooks.example/imagineq"},
        headers={"Authorization": f"Bearer {TOKENS[0]}"},
        timeout=10,
    )
    unsigned.stop()
    assert refused.status_code == 422
    (issue,) = refused.json()["detail"]
    assert issue["loc"] == ["body", "notify_url"] and "IMAGINEQ_NOTIFY__SIGNING_SECRET" in issue["msg"]
