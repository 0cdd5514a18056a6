"""UpstreamClient against a real HTTP server: a tiny threaded stdlib server scripted per test."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from config.settings import AccountSettings, HttpSettings
from core.errors import (
    NoCredits,
    OutcomeUnknown,
    RateLimited,
    TransportError,
    Unauthorized,
    Unavailable,
    UpstreamError,
    ValidationError,
)
from workers.upstream import TaskState, UpstreamClient
from workers.upstream.answers import CREATE_TASK, RECORD_INFO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

API_KEY = "sk-live-SECRET-4f9a1c0b7e"
PROMPT = "a red fox trots across fresh snow, camera tracking left"
READ_TIMEOUT_S = 0.4

CREATE = "/api/v1/jobs/createTask"
RECORD = "/api/v1/jobs/recordInfo"
DOWNLOAD = "/api/v1/common/download-url"
CREDIT = "/api/v1/chat/credit"

Behaviour = Callable[["Handler"], None]


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    #: The client's source port: the same port means the same (pooled) connection.
    client_port: int


@dataclass
class FakeUpstream:
    """Routes path → behaviour; records every request it saw."""

    base_url: str = ""
    routes: dict[str, Behaviour] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    #: Set at teardown so handlers that hang past the client's timeout end at once.
    release: threading.Event = field(default_factory=threading.Event)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: FakeUpstream  # set on a per-server subclass

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        self.upstream.seen.append(
            Seen(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query),
                headers=dict(self.headers.items()),
                body=json.loads(raw) if raw else None,
                client_port=self.client_address[1],
            )
        )
        behaviour = self.upstream.routes.get(parts.path)
        if behaviour is None:
            reply_json(404, {"code": 404, "msg": "no route"})(self)
        else:
            behaviour(self)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


# -- behaviours ---------------------------------------------------------------------------------------
def reply_json(status: int, body: Any, headers: dict[str, str] | None = None) -> Behaviour:
    def behave(handler: Handler) -> None:
        reply_text(status, json.dumps(body), {"Content-Type": "application/json", **(headers or {})})(handler)

    return behave


def reply_text(status: int, text: str, headers: dict[str, str] | None = None) -> Behaviour:
    def behave(handler: Handler) -> None:
        data = text.encode()
        handler.send_response(status)
        for name, value in {"Content-Type": "text/plain", **(headers or {})}.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return behave


def ok(data: Any) -> Behaviour:
    return reply_json(200, {"code": 200, "msg": "success", "data": data})


def close_before_answer(handler: Handler) -> None:
    """Read the request, then close without a byte of response."""
    handler.close_connection = True


def close_mid_body(handler: Handler) -> None:
    """Start a 200 answer, then close before the promised body is complete."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", "200")
    handler.end_headers()
    handler.wfile.write(b'{"code": 200, "msg": "success", "data": {"ta')
    handler.wfile.flush()
    handler.close_connection = True


def reset_connection(handler: Handler) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0) after reading the request."""
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.connection.close()
    handler.close_connection = True


def hang(upstream: FakeUpstream) -> Behaviour:
    """Answer only after the client has given up (or at teardown)."""

    def behave(handler: Handler) -> None:
        upstream.release.wait(10)
        close_before_answer(handler)

    return behave


# -- fixtures -----------------------------------------------------------------------------------------
@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    state = FakeUpstream()
    handler = type("BoundHandler", (Handler,), {"upstream": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def make_client(base_url: str) -> UpstreamClient:
    account = AccountSettings(name="acct-a", api_key=API_KEY, base_url=base_url)  # type: ignore[arg-type]
    return UpstreamClient(account, HttpSettings(connect_timeout_s=1.0, read_timeout_s=READ_TIMEOUT_S))


@pytest.fixture
def client(upstream: FakeUpstream) -> Iterator[UpstreamClient]:
    with make_client(upstream.base_url) as client:
        yield client


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port that is bound but not listening: connecting to it is refused, reliably."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def create(client: UpstreamClient, callback_url: str | None = None) -> str:
    return client.create_task({"prompt": PROMPT, "aspect_ratio": "3:2", "mode": "fun"}, callback_url=callback_url)


def assert_no_key(error: BaseException) -> None:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for item in chain:
        assert API_KEY not in str(item) and API_KEY not in repr(item)


# -- success paths ------------------------------------------------------------------------------------
def test_create_task_sends_the_documented_body_with_bearer_and_real_user_agent(
    upstream: FakeUpstream, client: UpstreamClient
) -> None:
    upstream.routes[CREATE] = ok({"taskId": "task-123"})

    task_id = create(client, callback_url="https://hooks.example/cb")

    assert task_id == "task-123"
    (seen,) = upstream.seen
    assert (seen.method, seen.path) == ("POST", CREATE)
    assert seen.body == {
        "model": "grok-imagine/text-to-video",
        "callBackUrl": "https://hooks.example/cb",
        "input": {"prompt": PROMPT, "aspect_ratio": "3:2", "mode": "fun"},
    }
    assert seen.headers["Authorization"] == f"Bearer {API_KEY}"
    assert "python-requests" not in seen.headers["User-Agent"]
    assert seen.headers["User-Agent"] == HttpSettings().user_agent


def test_create_task_without_callback_omits_the_field(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.routes[CREATE] = ok({"taskId": "task-9"})
    assert create(client) == "task-9"
    assert "callBackUrl" not in upstream.seen[0].body


def test_record_info_success(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.routes[RECORD] = ok(
        {
            "taskId": "task-123",
            "state": "success",
            "resultJson": json.dumps({"resultUrls": ["https://files.example/v.mp4"]}),
            "costTime": 15000,
            "createTime": 1_700_000_000_000,
        }
    )

    record = client.record_info("task-123")

    assert record.task_id == "task-123" and record.state is TaskState.SUCCESS
    assert record.result_urls == ("https://files.example/v.mp4",)
    assert record.cost_time_ms == 15000
    assert upstream.seen[0].query == {"taskId": ["task-123"]}
    assert upstream.seen[0].headers["Authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize(
    "data",
    [
        "https://files.example/fresh.mp4?sig=1",
        {"url": "https://files.example/fresh.mp4?sig=1"},
        {"downloadUrl": "https://files.example/fresh.mp4?sig=1"},
    ],
)
def test_download_url_success(upstream: FakeUpstream, client: UpstreamClient, data: Any) -> None:
    upstream.routes[DOWNLOAD] = ok(data)
    assert client.download_url("https://files.example/old.mp4") == "https://files.example/fresh.mp4?sig=1"
    assert upstream.seen[0].body == {"url": "https://files.example/old.mp4"}


def test_credits_success(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.routes[CREDIT] = ok(1234)
    assert client.credits() == 1234
    assert upstream.seen[0].method == "GET"


def test_the_pooled_connection_is_reused(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.routes[CREDIT] = ok(1)
    for _ in range(3):
        client.credits()
    assert len({seen.client_port for seen in upstream.seen}) == 1


# -- error answers --------------------------------------------------------------------------------------
def test_429_with_retry_after(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.routes[CREATE] = reply_json(
        429, {"code": 429, "msg": "too many"}, {"Retry-After": "12", "X-Request-Id": "rq-7"}
    )

    with pytest.raises(RateLimited) as caught:
        create(client)

    error = caught.value
    assert (error.retry_after_s, error.status, error.code, error.request_id) == (12.0, 429, 429, "rq-7")
    assert error.endpoint == CREATE_TASK and error.retryable


def test_http_200_with_error_code_in_the_body(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.routes[CREATE] = reply_json(200, {"code": 402, "message": "insufficient credits"})
    with pytest.raises(NoCredits, match="insufficient credits"):
        create(client)


def test_cloudflare_1010_is_unauthorized(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.routes[CREDIT] = reply_text(403, "error code: 1010")
    with pytest.raises(Unauthorized, match="User-Agent"):
        client.credits()


def test_html_502_is_unavailable(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.routes[RECORD] = reply_text(502, "<html>bad gateway</html>", {"Content-Type": "text/html"})
    with pytest.raises(Unavailable):
        client.record_info("task-1")


def test_echoed_key_is_redacted(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.routes[CREATE] = reply_json(401, {"code": 401, "msg": f"invalid key {API_KEY}"})
    with pytest.raises(Unauthorized) as caught:
        create(client)
    assert_no_key(caught.value)
    assert "[redacted]" in str(caught.value)


def test_success_without_task_id_is_outcome_unknown(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.routes[CREATE] = ok({})
    with pytest.raises(OutcomeUnknown):
        create(client)


def test_invalid_input_is_refused_before_sending(upstream: FakeUpstream, client: UpstreamClient) -> None:
    with pytest.raises(ValidationError, match="model"):
        client.create_task({"prompt": "ok"}, model="grok-imagine/text-to-music")
    with pytest.raises(ValidationError, match="callback_url"):
        client.create_task({"prompt": "ok"}, callback_url="ftp://example.test/cb")
    assert upstream.seen == []


# -- transport failures ---------------------------------------------------------------------------------
@pytest.mark.parametrize("behaviour", [close_before_answer, close_mid_body, reset_connection])
def test_create_task_connection_lost_after_sending_is_outcome_unknown(
    upstream: FakeUpstream, client: UpstreamClient, behaviour: Behaviour
) -> None:
    upstream.routes[CREATE] = behaviour

    with pytest.raises(OutcomeUnknown) as caught:
        create(client)

    assert len(upstream.seen) == 1  # it did arrive
    assert caught.value.retryable and caught.value.reason == "outcome_unknown"
    assert_no_key(caught.value)


@pytest.mark.parametrize("behaviour", [close_before_answer, close_mid_body, reset_connection])
def test_record_info_connection_lost_is_transport_error(
    upstream: FakeUpstream, client: UpstreamClient, behaviour: Behaviour
) -> None:
    upstream.routes[RECORD] = behaviour
    with pytest.raises(TransportError) as caught:
        client.record_info("task-1")
    assert type(caught.value) is TransportError


def test_create_task_read_timeout_is_outcome_unknown(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.routes[CREATE] = hang(upstream)
    with pytest.raises(OutcomeUnknown, match="ReadTimeout") as caught:
        create(client)
    assert caught.value.endpoint == CREATE_TASK
    assert_no_key(caught.value)


def test_record_info_read_timeout_is_transport_error(upstream: FakeUpstream, client: UpstreamClient) -> None:
    upstream.routes[RECORD] = hang(upstream)
    with pytest.raises(TransportError) as caught:
        client.record_info("task-1")
    assert type(caught.value) is TransportError and caught.value.endpoint == RECORD_INFO


@pytest.mark.parametrize("call", ["create", "record_info", "credits"])
def test_connection_refused_is_transport_error_even_for_create(refused_port: int, call: str) -> None:
    with make_client(f"http://127.0.0.1:{refused_port}") as client, pytest.raises(UpstreamError) as caught:
        if call == "create":
            create(client)
        elif call == "record_info":
            client.record_info("task-1")
        else:
            client.credits()
    assert type(caught.value) is TransportError  # not sent, so never OutcomeUnknown
    assert "not sent" in str(caught.value)
    assert_no_key(caught.value)


# -- secrets in logs and reprs ----------------------------------------------------------------------------
def test_key_and_prompt_never_reach_logs_or_reprs(
    upstream: FakeUpstream, client: UpstreamClient, refused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream.routes[CREATE] = ok({"taskId": "task-1"})
    upstream.routes[RECORD] = reply_json(200, {"code": 401, "msg": f"bad key {API_KEY}"})
    upstream.routes[CREDIT] = hang(upstream)
    errors: list[UpstreamError] = []

    def failing(call: Callable[[], object]) -> None:
        with pytest.raises(UpstreamError) as caught:
            call()
        errors.append(caught.value)
        logging.getLogger("test").error("call failed", exc_info=caught.value)

    create(client)
    failing(lambda: client.record_info("task-1"))  # 401 echoing the key
    failing(client.credits)  # read timeout
    with make_client(f"http://127.0.0.1:{refused_port}") as refused:
        failing(refused.credits)  # connection refused

    assert [type(error) for error in errors] == [Unauthorized, TransportError, TransportError]
    assert repr(client) == "UpstreamClient(account='acct-a')"
    upstream_lines = [r.getMessage() for r in caplog.records if r.name == "imagineq.upstream"]
    assert len(upstream_lines) == 4
    assert all("acct-a" in line for line in upstream_lines)
    assert any(line.startswith("createTask ") and "status=200" in line for line in upstream_lines)
    for record in caplog.records:
        assert API_KEY not in record.getMessage()
        assert PROMPT not in record.getMessage()
    assert API_KEY not in caplog.text and PROMPT not in caplog.text
    for error in errors:
        assert_no_key(error)
