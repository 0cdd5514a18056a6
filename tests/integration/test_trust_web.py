"""The web, tried as an attacker would: a stranger or one tenant holding every connection, guessing tokens,
signing a browser in, putting words on a page; a tenant reaching past its limits or seeing the deployment.

A real uvicorn web process (the Procfile's protocol) against a private Redis, no workers. Attackers come
from their own loopback addresses (127.0.0.2 and up: every 127/8 address is this machine), so the
address-based limits they meet never touch the tests' other clients on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import pytest
import redis
import requests

from core.jobs import JobRequest, JobState
from core.jobstore import JobStore
from core.keys import Keys
from devstack import services
from devstack.deployment import must, wait_until
from devstack.services import LocalStack, Service

pytestmark = pytest.mark.integration

ADMIN = f"ops-{uuid.uuid4().hex}"
TENANT = f"acme-{uuid.uuid4().hex}"
RIVAL = f"rival-{uuid.uuid4().hex}"
RACER = f"racer-{uuid.uuid4().hex}"
HOARDER = f"hoarder-{uuid.uuid4().hex}"
HASHED = f"hashed-{uuid.uuid4().hex}"
PRINCIPALS: list[dict[str, Any]] = [
    # Given by its digest only: a process holding these settings never holds the token.
    {"name": "hashed", "token_sha256": hashlib.sha256(HASHED.encode()).hexdigest()},
    {"name": "ops", "token": ADMIN, "admin": True},
    {"name": "acme", "token": TENANT, "max_event_streams": 3, "max_live_jobs": 3},
    {"name": "rival", "token": RIVAL},
    {"name": "racer", "token": RACER, "max_live_jobs": 3},
    {"name": "hoarder", "token": HOARDER, "max_live_jobs": 5, "max_kept_jobs": 20},
]
PER_CLIENT = 20
PROXY = "127.0.0.9"


@dataclass
class Web:
    service: Service
    url: str
    redis: redis.Redis
    jobs: JobStore
    keys: Keys
    env: dict[str, str]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with services.terminate_on_signals(), LocalStack(tmp_path_factory.mktemp("trust-web")) as started:
        yield started


@pytest.fixture(scope="module")
def web(stack: LocalStack) -> Iterator[Web]:
    redis_url = stack.redis()
    env = {
        "IMAGINEQ_REDIS_URL": redis_url,
        "IMAGINEQ_API_KEY": "sim-key",
        "IMAGINEQ_INGRESS_PRINCIPALS": json.dumps(PRINCIPALS),
        "IMAGINEQ_WEB_HEADER_TIMEOUT_S": "2",
        "IMAGINEQ_WEB_BODY_TIMEOUT_S": "2",
        "IMAGINEQ_WEB_MAX_CONNECTIONS_PER_CLIENT": str(PER_CLIENT),
        "IMAGINEQ_WEB_AUTH_FAILURES_PER_MIN": "5",
        "IMAGINEQ_WEB_TRUSTED_PROXIES": json.dumps([PROXY]),
    }
    service = services.start_web(stack, env)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    keys = Keys("iq")
    yield Web(service, service.url, client, JobStore(client, keys), keys, env)
    client.close()


@pytest.fixture(autouse=True)
def _clean(web: Web) -> None:
    web.redis.flushall()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def from_address(
    web: Web, address: str, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> Any:
    """One request from the loopback ``address``: (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10, source_address=(address, 0))
    try:
        connection.request(method, path, body=body or None, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def healthz_ok(web: Web) -> bool:
    try:
        return requests.get(f"{web.url}/healthz", timeout=3).status_code == 200
    except requests.RequestException:
        return False


# -- connections ----------------------------------------------------------------------------------------


SLOW_SIGN_IN = (
    b"POST /signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: 1000\r\n\r\ntoken="
)


def test_199_connections_that_never_finish_their_body_cannot_take_the_web(web: Web):
    """Each announces 1,000 bytes and sends 6: it used to hold a place of --limit-concurrency (200) for as
    long as it liked, and /healthz answered 503 for everyone. Now one address holds at most its share, and
    a body not finished in time loses its connection."""
    held: list[socket.socket] = []
    refused = 0
    try:
        for _ in range(199):
            sock = socket.create_connection(("127.0.0.1", web.port), timeout=5, source_address=("127.0.0.2", 0))
            sock.sendall(SLOW_SIGN_IN)
            held.append(sock)
        # Past the per-client cap, each is answered 503 and closed before anything is read.
        for sock in held[PER_CLIENT:]:
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503"), answer[:80]
            refused += 1
        assert refused == 199 - PER_CLIENT
        # Everyone else is served meanwhile, /healthz included.
        assert healthz_ok(web)
        assert requests.get(f"{web.url}/v1/jobs", headers=bearer(TENANT), timeout=5).status_code == 200
        # The ones let in lose their connection once their body is late (web_body_timeout_s: 2 s).
        for sock in held[:PER_CLIENT]:
            sock.settimeout(10)
            assert sock.recv(4096) == b""  # closed by the server, no answer
        assert healthz_ok(web)
    finally:
        for sock in held:
            sock.close()


def test_a_tenants_open_event_streams_are_capped_and_others_still_connect(web: Web):
    streams: list[requests.Response] = []
    try:
        for _ in range(3):
            opened = requests.get(f"{web.url}/v1/events", headers=bearer(TENANT), stream=True, timeout=10)
            assert opened.status_code == 200
            streams.append(opened)
        refused = requests.get(f"{web.url}/v1/events", headers=bearer(TENANT), timeout=10)
        assert refused.status_code == 429 and "max_event_streams" in refused.json()["detail"]
        assert int(refused.headers["Retry-After"]) > 0
        # Another tenant and the admin are not affected.
        for token in (RIVAL, ADMIN):
            other = requests.get(f"{web.url}/v1/events", headers=bearer(token), stream=True, timeout=10)
            assert other.status_code == 200
            streams.append(other)
        # A stream that closes gives its place back.
        streams.pop(0).close()
        wait_until(
            lambda: int(cast(int, web.redis.zcard(web.keys.event_streams("acme")))) == 2,
            15,
            "the closed stream's place to be given back",
        )
        again = requests.get(f"{web.url}/v1/events", headers=bearer(TENANT), stream=True, timeout=10)
        assert again.status_code == 200
        streams.append(again)
    finally:
        for stream in streams:
            stream.close()


# -- guessing tokens, signing browsers in ---------------------------------------------------------------


def test_failed_sign_ins_and_bearer_tokens_are_throttled_per_address(web: Web):
    guesser = "127.0.0.3"
    statuses = [from_address(web, guesser, "POST", "/signin", f"token=guess-{i}".encode(), FORM)[0] for i in range(8)]
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429] * 3
    # Locked out, even the right token is not looked at.
    status, headers, _ = from_address(web, guesser, "POST", "/signin", f"token={TENANT}".encode(), FORM)
    assert status == 429 and int(headers["retry-after"]) >= 1
    status, _, body = from_address(web, guesser, "GET", "/v1/jobs", headers=bearer(TENANT))
    assert status == 429 and b"web_auth_failures_per_min" in body
    # Bearer guesses from another address are counted the same way.
    other = "127.0.0.4"
    answers = [from_address(web, other, "GET", "/v1/jobs", headers=bearer(f"guess-{i}"))[0] for i in range(7)]
    assert answers == [401] * 5 + [429] * 2
    # Nobody else is slowed down.
    assert requests.get(f"{web.url}/v1/jobs", headers=bearer(TENANT), timeout=5).status_code == 200
    signed = requests.post(f"{web.url}/signin", data={"token": TENANT}, allow_redirects=False, timeout=5)
    assert signed.status_code == 303


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    "headers", [{"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"}], ids=["origin", "fetch-site"]
)
def test_a_sign_in_posted_from_another_site_is_refused(web: Web, headers: dict[str, str]):
    """Login CSRF: a page elsewhere posting the attacker's token would sign the victim's browser in as
    the attacker (who then reads what the victim does there)."""
    answer = requests.post(
        f"{web.url}/signin", data={"token": RIVAL}, headers=headers, allow_redirects=False, timeout=5
    )
    assert answer.status_code == 403
    assert "set-cookie" not in {name.lower() for name in answer.headers}


def test_a_link_cannot_put_words_on_a_job_page(web: Web):
    job = requests.post(f"{web.url}/v1/jobs", json={"prompt": "a job"}, headers=bearer(TENANT), timeout=5).json()
    session = requests.Session()
    session.post(f"{web.url}/signin", data={"token": TENANT}, timeout=5)
    words = "Session expired – sign in again at https://evil.example/login"
    page = session.get(f"{web.url}/jobs/{job['id']}", params={"notice": words}, timeout=5).text
    assert "evil.example" not in page and "Session expired" not in page
    assert "Canceled." in session.get(f"{web.url}/jobs/{job['id']}", params={"notice": "canceled"}, timeout=5).text


def test_a_tenants_overview_shows_its_own_work_only(web: Web):
    requests.post(f"{web.url}/v1/jobs", json={"prompt": "acme's job"}, headers=bearer(TENANT), timeout=5)
    requests.post(f"{web.url}/v1/jobs", json={"prompt": "rival's job"}, headers=bearer(RIVAL), timeout=5)
    tenant, admin = requests.Session(), requests.Session()
    tenant.post(f"{web.url}/signin", data={"token": TENANT}, timeout=5)
    admin.post(f"{web.url}/signin", data={"token": ADMIN}, timeout=5)
    seen = tenant.get(f"{web.url}/", timeout=5).text
    assert "acme&#39;s job" in seen or "acme's job" in seen
    assert "rival" not in seen
    for deployment_data in ('data-account="default"', "Credits", "Queues", "Stored per minute"):
        assert deployment_data not in seen, deployment_data
    overview = admin.get(f"{web.url}/", timeout=5).text
    assert 'data-account="default"' in overview and "Queues" in overview


# -- sessions, proxies ----------------------------------------------------------------------------------


def test_a_dashboard_session_ends_when_its_token_is_rotated(web: Web, stack: LocalStack):
    session = requests.Session()
    assert session.post(f"{web.url}/signin", data={"token": TENANT}, timeout=5).status_code == 200
    assert session.get(f"{web.url}/jobs", allow_redirects=False, timeout=5).status_code == 200
    # The operator rotates acme's token: a web with the new settings, on the same Redis.
    rotated = [dict(p, token=f"acme-new-{uuid.uuid4().hex}") if p["name"] == "acme" else p for p in PRINCIPALS]
    renewed = services.start_web(stack, {**web.env, "IMAGINEQ_INGRESS_PRINCIPALS": json.dumps(rotated)})
    try:
        cookie = {"imagineq_session": must(session.cookies.get("imagineq_session"))}
        answer = requests.get(f"{renewed.url}/jobs", cookies=cookie, allow_redirects=False, timeout=5)
        assert answer.status_code == 303 and answer.headers["location"] == "/signin"
        assert requests.get(f"{renewed.url}/v1/jobs", headers=bearer(TENANT), timeout=5).status_code == 401
    finally:
        renewed.stop()


def test_forwarded_headers_are_believed_from_a_trusted_proxy_only(web: Web):
    host = f"127.0.0.1:{web.port}"
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9", "Host": host}
    body = f"token={TENANT}".encode()
    # Through the proxy: the browser spoke HTTPS, so the cookie is Secure, and a POST the dashboard's own
    # https page makes is of its own origin.
    status, headers, _ = from_address(web, PROXY, "POST", "/signin", body, {**forwarded, **FORM})
    assert status == 303 and "Secure" in headers["set-cookie"]
    cookie = headers["set-cookie"].split(";", 1)[0]
    status, _, page = from_address(web, PROXY, "GET", "/jobs", headers={**forwarded, "Cookie": cookie})
    csrf = page.decode().split('name="csrf" value="', 1)[1].split('"', 1)[0]
    signout = {**forwarded, **FORM, "Cookie": cookie, "Origin": f"https://{host}"}
    status, _, _ = from_address(web, PROXY, "POST", "/signout", f"csrf={csrf}".encode(), signout)
    assert status == 303
    # From anyone else the same headers change nothing.
    status, headers, _ = from_address(web, "127.0.0.5", "POST", "/signin", body, {**forwarded, **FORM})
    assert status == 303 and "Secure" not in headers["set-cookie"]


# -- limits ---------------------------------------------------------------------------------------------


def test_racing_requests_never_get_past_the_live_job_cap(web: Web):
    """Ten requests at once for three places: the check and the count are one step in Redis."""
    barrier = threading.Barrier(10)

    def post(i: int) -> int:
        barrier.wait()
        return requests.post(
            f"{web.url}/v1/jobs", json={"prompt": f"race {i}"}, headers=bearer(RACER), timeout=20
        ).status_code

    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(post, range(10)))
    assert sorted(statuses) == [201] * 3 + [429] * 7, statuses
    assert web.jobs.count_by_state()[JobState.QUEUED] == 3


def test_a_dashboard_resubmit_counts_against_the_live_job_cap(web: Web):
    first = requests.post(f"{web.url}/v1/jobs", json={"prompt": "fails"}, headers=bearer(TENANT), timeout=5).json()
    assert web.jobs.transition(first["id"], JobState.SUBMITTING, expect=JobState.QUEUED)
    assert web.jobs.transition(
        first["id"], JobState.FAILED, fields={"reason": "timed_out", "error": "no result in time"}
    )
    for i in range(3):  # the cap (3) is reached with the failed job out of it
        assert (
            requests.post(
                f"{web.url}/v1/jobs", json={"prompt": f"live {i}"}, headers=bearer(TENANT), timeout=5
            ).status_code
            == 201
        )
    session = requests.Session()
    session.post(f"{web.url}/signin", data={"token": TENANT}, timeout=5)
    page = session.get(f"{web.url}/jobs/{first['id']}", timeout=5).text
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    answer = session.post(f"{web.url}/jobs/{first['id']}/resubmit", data={"csrf": csrf}, timeout=5)
    assert "at one of its limits" in answer.text
    assert must(web.jobs.get(first["id"])).state is JobState.FAILED


def test_canceled_jobs_count_against_the_kept_records_cap(web: Web):
    """Canceled records live 30 days: capped on live jobs alone, a tenant could fill Redis with them."""
    for i in range(20):
        created = requests.post(
            f"{web.url}/v1/jobs",
            json={"prompt": "🦄" * 4000, "metadata": {"pad": "x" * 8000}},
            headers=bearer(HOARDER),
            timeout=5,
        )
        assert created.status_code == 201, (i, created.text)
        assert requests.delete(f"{web.url}/v1/jobs/{created.json()['id']}", headers=bearer(HOARDER), timeout=5).ok
    before = web.jobs.count_by_state()
    refused = requests.post(f"{web.url}/v1/jobs", json={"prompt": "one more"}, headers=bearer(HOARDER), timeout=5)
    assert refused.status_code == 429 and "max_kept_jobs" in refused.json()["detail"]
    assert web.jobs.count_by_state() == before and before[JobState.CANCELED] == 20


def test_a_listing_filtered_by_batch_reads_little_of_redis(web: Web):
    """``?batch=<none>&limit=1000`` used to read up to 10,000 whole records to find nothing."""
    prompt = "p" * 4990
    for start in range(0, 2000, 500):
        web.jobs.create_many([JobRequest(prompt=f"{prompt} {i}", owner="acme") for i in range(start, start + 500)])
    sent_before = int(cast(dict[str, Any], web.redis.info("stats"))["total_net_output_bytes"])
    page = requests.get(
        f"{web.url}/v1/jobs", params={"batch": "no-such-batch", "limit": "150"}, headers=bearer(ADMIN), timeout=30
    ).json()
    sent = int(cast(dict[str, Any], web.redis.info("stats"))["total_net_output_bytes"]) - sent_before
    assert page["jobs"] == [] and page["next_cursor"] is not None  # 1,500 entries looked at, none matched
    assert sent < 300_000, sent  # the 1,500 records looked at weigh 7.5 MB


def test_a_principal_given_by_its_tokens_digest_signs_in_with_the_token(web: Web):
    assert requests.get(f"{web.url}/v1/jobs", headers=bearer(HASHED), timeout=5).status_code == 200
    signed = requests.post(f"{web.url}/signin", data={"token": HASHED}, allow_redirects=False, timeout=5)
    assert signed.status_code == 303


def test_principals_must_have_unique_names_and_tokens():
    from config.settings import ConfigError, load_settings

    token = f"tok-{uuid.uuid4().hex}"
    with pytest.raises(ConfigError, match="names must be unique"):
        load_settings(ingress_principals=[{"name": "a", "token": token}, {"name": "a", "token": token + "x"}])
    with pytest.raises(ConfigError, match="may be named 'default'"):
        load_settings(ingress_tokens=[token], ingress_principals=[{"name": "default", "token": token + "x"}])
    with pytest.raises(ConfigError, match="every ingress token must be different"):
        load_settings(ingress_principals=[{"name": "a", "token": token}, {"name": "b", "token": token}])
    with pytest.raises(ConfigError, match="at least 24 characters"):
        load_settings(ingress_tokens=["short-token"])
    with pytest.raises(ConfigError, match="at least 24 characters") as weak:
        load_settings(ingress_principals=[{"name": "a", "token": "a" * 40}])
    assert "a" * 40 not in str(weak.value)  # the refused token itself is never shown
