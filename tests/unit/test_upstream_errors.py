"""The upstream error tree and response mapping, and TaskRecord parsing: pure logic, no servers."""

from __future__ import annotations

import email.utils
import json
import pickle
import socket
import time
from typing import Any

import pytest
import requests
from pydantic import SecretStr
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from config.settings import AccountSettings, HttpSettings
from core.errors import (
    BODY_MAX_CHARS,
    AccountError,
    FatalError,
    FeatureDisabled,
    GenerationFailed,
    ImagineQError,
    KeyCapExceeded,
    Maintenance,
    NoCredits,
    NotFound,
    OutcomeUnknown,
    RateLimited,
    Rejected,
    ResultTimeout,
    RetryableError,
    TransportError,
    Unauthorized,
    Unavailable,
    UpstreamError,
    ValidationError,
)
from workers.upstream import TaskRecord, TaskState, UpstreamClient
from workers.upstream.answers import (
    CREATE_TASK,
    CREDIT,
    DOWNLOAD_URL,
    RECORD_INFO,
    error_from_response,
    parse_retry_after,
)

API_KEY = "sk-test-0123456789abcdef"

#: Every documented code: (endpoint, code, class, reason, retryable).
DOCUMENTED = [
    (CREATE_TASK, 401, Unauthorized, "unauthorized", False),
    (CREATE_TASK, 402, NoCredits, "no_credits", False),
    (RECORD_INFO, 404, NotFound, "not_found", False),
    (RECORD_INFO, 408, ResultTimeout, "timed_out", False),
    (CREATE_TASK, 408, Unavailable, "unavailable", True),
    (CREATE_TASK, 422, Rejected, "rejected", False),
    (CREATE_TASK, 429, RateLimited, "rate_limited", True),
    (CREATE_TASK, 433, KeyCapExceeded, "key_cap_exceeded", False),
    (CREATE_TASK, 455, Maintenance, "unavailable", True),
    (RECORD_INFO, 500, Unavailable, "unavailable", True),
    (RECORD_INFO, 501, GenerationFailed, "generation_failed", False),
    (CREATE_TASK, 505, FeatureDisabled, "feature_disabled", False),
]


def envelope(code: int, msg: str = "boom", key: str = "msg") -> tuple[dict[str, Any], str]:
    body = {"code": code, key: msg, "data": None}
    return body, json.dumps(body)


@pytest.mark.parametrize(("endpoint", "code", "cls", "reason", "retryable"), DOCUMENTED)
@pytest.mark.parametrize("style", ["http200_body_code", "mirrored_status"])
def test_every_documented_code_maps_to_its_class_in_both_styles(
    endpoint: str, code: int, cls: type[UpstreamError], reason: str, retryable: bool, style: str
) -> None:
    # Given the upstream reports `code` either in the body of an HTTP 200 or mirrored in the status
    body, text = envelope(code, "something went wrong")
    http_status = 200 if style == "http200_body_code" else code

    # When the response is mapped
    error = error_from_response(endpoint, http_status, body, text, {"X-Request-Id": "req-1"})

    # Then the class, the stable reason and the retry decision follow the table
    assert type(error) is cls
    assert error.reason == reason
    assert error.retryable is retryable
    assert error.retryable is isinstance(error, RetryableError)
    assert (error.status, error.code, error.endpoint, error.request_id) == (
        http_status,
        code,
        endpoint,
        "req-1",
    )
    assert error.message == "something went wrong"
    assert error.body == text
    assert "something went wrong" in str(error) and endpoint in str(error) and "req-1" in str(error)


@pytest.mark.parametrize("http_status", [200, 201])
def test_success_is_none(http_status: int) -> None:
    body = {"code": 200, "msg": "success", "data": {"taskId": "t1"}}
    assert error_from_response(CREATE_TASK, http_status, body, json.dumps(body), {}) is None


@pytest.mark.parametrize("key", ["msg", "message"])
def test_message_is_read_from_msg_or_message(key: str) -> None:
    body, text = envelope(422, "prompt too long", key=key)
    error = error_from_response(CREATE_TASK, 200, body, text, {})
    assert isinstance(error, Rejected)
    assert error.message == "prompt too long"


def test_missing_message_falls_back_to_the_code() -> None:
    error = error_from_response(CREATE_TASK, 200, {"code": 402}, '{"code": 402}', {})
    assert isinstance(error, NoCredits)
    assert "402" in error.message


def test_body_code_wins_over_a_different_http_status() -> None:
    body, text = envelope(455, "maintenance")
    error = error_from_response(CREATE_TASK, 503, body, text, {})
    assert isinstance(error, Unavailable)
    assert (error.status, error.code) == (503, 455)


def test_string_code_is_understood() -> None:
    body = {"code": "429", "msg": "slow down"}
    assert isinstance(error_from_response(CREATE_TASK, 200, body, json.dumps(body), {}), RateLimited)


# -- Retry-After ------------------------------------------------------------------------------------
@pytest.mark.parametrize("style", ["http200_body_code", "mirrored_status"])
def test_retry_after_seconds(style: str) -> None:
    body, text = envelope(429)
    status = 200 if style == "http200_body_code" else 429
    error = error_from_response(CREATE_TASK, status, body, text, {"retry-after": "7"})
    assert isinstance(error, RateLimited)
    assert error.retry_after_s == 7.0


def test_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    body, text = envelope(455, "maintenance")
    error = error_from_response(CREATE_TASK, 200, body, text, {"Retry-After": when})
    assert isinstance(error, Unavailable)
    assert error.retry_after_s is not None
    assert 115 <= error.retry_after_s <= 121


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("2.5", 2.5),
        ("-3", 0.0),
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past: no wait
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_date_relative_to_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 30) == 30.0


def test_retry_after_is_ignored_on_non_retryable_errors() -> None:
    body, text = envelope(402)
    error = error_from_response(CREATE_TASK, 200, body, text, {"Retry-After": "60"})
    assert isinstance(error, NoCredits)
    assert not hasattr(error, "retry_after_s")


# -- non-JSON bodies and undocumented codes ---------------------------------------------------------
def test_cloudflare_1010_plain_text_403_is_unauthorized_and_says_what_to_do() -> None:
    error = error_from_response(CREATE_TASK, 403, None, "error code: 1010", {"CF-Ray": "8a1b2c"})
    assert isinstance(error, Unauthorized)
    assert error.reason == "unauthorized" and not error.retryable
    assert "User-Agent" in str(error)
    assert error.request_id == "8a1b2c"
    assert error.body == "error code: 1010"


@pytest.mark.parametrize(
    ("endpoint", "status", "cls"),
    [
        (RECORD_INFO, 502, Unavailable),
        (CREATE_TASK, 502, Unavailable),
        (RECORD_INFO, 503, Unavailable),
        (RECORD_INFO, 504, Unavailable),
        (CREATE_TASK, 504, OutcomeUnknown),  # the gateway forwarded it and gave up waiting
        (CREATE_TASK, 429, RateLimited),
        (CREDIT, 200, TransportError),
        (RECORD_INFO, 404, TransportError),  # an HTML 404 is a wrong URL or proxy, not a lost task
        (DOWNLOAD_URL, 403, TransportError),
    ],
)
def test_non_json_bodies(endpoint: str, status: int, cls: type[UpstreamError]) -> None:
    html = "<html><body><h1>Bad Gateway</h1>" + "x" * 2000 + "</body></html>"
    error = error_from_response(endpoint, status, None, html, {})
    assert type(error) is cls
    assert error.status == status and error.code is None
    assert error.body is not None and len(error.body) <= BODY_MAX_CHARS
    assert f"HTTP {status}" in str(error)


def test_json_that_is_not_an_object_is_a_bad_response() -> None:
    assert isinstance(error_from_response(RECORD_INFO, 200, [1, 2], "[1, 2]", {}), TransportError)


def test_http_200_without_a_code_is_a_bad_response() -> None:
    error = error_from_response(RECORD_INFO, 200, {"data": {}}, '{"data": {}}', {})
    assert isinstance(error, TransportError)
    assert error.reason == "transport"


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (200, 599, Unavailable),
        (200, 503, Unavailable),
        (200, 400, Rejected),
        (200, 418, Rejected),
        (200, 403, Unauthorized),
        (200, 0, TransportError),
        (200, 302, TransportError),
        (409, None, Rejected),  # JSON error body without a code: the HTTP status decides
        (599, None, Unavailable),
        (500, 200, Unavailable),  # "code 200" under an HTTP 500 is not a success
    ],
)
def test_undocumented_codes(status: int, code: int | None, cls: type[UpstreamError]) -> None:
    body: dict[str, Any] = {"msg": "odd"} if code is None else {"code": code, "msg": "odd"}
    error = error_from_response(RECORD_INFO, status, body, json.dumps(body), {})
    assert type(error) is cls


def test_endpoint_path_is_shortened() -> None:
    body, text = envelope(408)
    error = error_from_response("/api/v1/jobs/recordInfo?taskId=abc", 200, body, text, {})
    assert isinstance(error, ResultTimeout)
    assert error.endpoint == RECORD_INFO


def test_body_and_message_are_truncated() -> None:
    body = {"code": 422, "msg": "m" * 5000}
    text = json.dumps(body)
    error = error_from_response(CREATE_TASK, 422, body, text, {})
    assert error is not None and error.body is not None
    assert len(error.body) <= BODY_MAX_CHARS and len(error.message) <= BODY_MAX_CHARS


# -- the tree -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "base", "reason", "retryable"),
    [
        (RateLimited, RetryableError, "rate_limited", True),
        (Unavailable, RetryableError, "unavailable", True),
        (TransportError, RetryableError, "transport", True),
        (OutcomeUnknown, RetryableError, "outcome_unknown", True),
        (Rejected, FatalError, "rejected", False),
        (NotFound, FatalError, "not_found", False),
        (GenerationFailed, FatalError, "generation_failed", False),
        (ResultTimeout, FatalError, "timed_out", False),
        (Unauthorized, AccountError, "unauthorized", False),
        (NoCredits, AccountError, "no_credits", False),
        (KeyCapExceeded, AccountError, "key_cap_exceeded", False),
        (FeatureDisabled, AccountError, "feature_disabled", False),
    ],
)
def test_each_class_reason_and_retryable(
    cls: type[UpstreamError], base: type[UpstreamError], reason: str, retryable: bool
) -> None:
    error = cls("x", status=500, code=500, endpoint=CREATE_TASK, request_id="r", body="b")
    assert isinstance(error, base) and isinstance(error, UpstreamError) and isinstance(error, ImagineQError)
    assert error.reason == reason
    assert error.retryable is retryable


def test_errors_survive_pickling_with_their_details() -> None:
    error = RateLimited("slow", retry_after_s=3.0, status=429, code=429, endpoint=CREATE_TASK, request_id="r")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is RateLimited
    assert (copy.retry_after_s, copy.status, copy.request_id, str(copy)) == (3.0, 429, "r", str(error))
    validation = pickle.loads(pickle.dumps(ValidationError("prompt", "too long")))
    assert str(validation) == "prompt: too long"


def test_validation_error_names_the_field_and_the_limit() -> None:
    error = ValidationError("prompt", "must be at most 5000 characters (got 5001)")
    assert str(error) == "prompt: must be at most 5000 characters (got 5001)"
    assert isinstance(error, ImagineQError) and not isinstance(error, UpstreamError)
    assert error.field == "prompt" and error.reason == "invalid_request" and not error.retryable


def test_a_transport_error_never_quotes_the_api_key() -> None:
    # A library's exception text can quote the request (a proxy's error echoing the Authorization
    # header): the client redacts it before the error is built. (An echoed key in a response body is
    # covered, against a real HTTP server, by test_upstream_client.py::test_echoed_key_is_redacted.)
    account = AccountSettings(name="a", api_key=SecretStr(API_KEY), base_url="http://127.0.0.1:9")
    client = UpstreamClient(account, HttpSettings())
    failure = requests.exceptions.ProxyError(f"407 from proxy: Authorization: Bearer {API_KEY} refused")
    for endpoint in (CREATE_TASK, RECORD_INFO):
        error = client._transport_error(endpoint, failure)
        texts = (str(error), repr(error), error.message, error.body or "")
        assert all(API_KEY not in text for text in texts), texts
        assert "[redacted]" in error.message


# -- TaskRecord.from_payload -------------------------------------------------------------------------
def payload(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "taskId": "task-1",
        "model": "grok-imagine/text-to-video",
        "state": "success",
        "param": json.dumps({"input": {"prompt": "a cat"}}),
        "resultJson": json.dumps({"resultUrls": ["https://files.example/v.mp4"]}),
        "failCode": None,
        "failMsg": None,
        "costTime": 12345,
        "createTime": 1_700_000_000_000,
        "completeTime": 1_700_000_012_345,
        "updateTime": 1_700_000_012_345,
    }
    data.update(overrides)
    return data


def test_from_payload_success() -> None:
    record = TaskRecord.from_payload(payload())
    assert record == TaskRecord(
        task_id="task-1",
        state=TaskState.SUCCESS,
        result_urls=("https://files.example/v.mp4",),
        fail_code="",
        fail_msg="",
        cost_time_ms=12345,
        create_time_ms=1_700_000_000_000,
        complete_time_ms=1_700_000_012_345,
        update_time_ms=1_700_000_012_345,
    )
    assert record.state.terminal


def test_from_payload_accepts_task_id_snake_case_and_result_json_dict() -> None:
    data = payload(resultJson={"resultUrls": ["https://a/1.mp4", "https://a/2.mp4"]})
    del data["taskId"]
    data["task_id"] = "task-2"
    record = TaskRecord.from_payload(data)
    assert record.task_id == "task-2"
    assert record.result_urls == ("https://a/1.mp4", "https://a/2.mp4")


@pytest.mark.parametrize("empty", [None, "", "  ", {}, "{}"])
def test_from_payload_empty_result_json(empty: Any) -> None:
    record = TaskRecord.from_payload(payload(state="generating", resultJson=empty))
    assert record.result_urls == ()
    assert record.state is TaskState.GENERATING and not record.state.terminal


def test_from_payload_failure_fields() -> None:
    record = TaskRecord.from_payload(
        payload(state="fail", resultJson="", failCode=1001, failMsg="moderation", completeTime="17")
    )
    assert (record.state, record.fail_code, record.fail_msg) == (TaskState.FAIL, "1001", "moderation")
    assert record.complete_time_ms == 17


def test_from_payload_garbled_optional_numbers_become_none() -> None:
    record = TaskRecord.from_payload(payload(costTime="soon", updateTime=True, createTime=[1]))
    assert (record.cost_time_ms, record.update_time_ms, record.create_time_ms) == (None, None, None)


@pytest.mark.parametrize(
    "data",
    [
        {},
        None,
        "task-1",
        ["task-1"],
        {"state": "success"},
        {"taskId": "", "state": "success"},
        {"taskId": None, "state": "success"},
        {"taskId": "t", "state": "exploded"},
        {"taskId": "t"},
        {"taskId": "t", "state": 3},
        {"taskId": "t", "state": "success", "resultJson": "{not json"},
        {"taskId": "t", "state": "success", "resultJson": "[1]"},
        {"taskId": "t", "state": "success", "resultJson": {"resultUrls": "https://a"}},
        {"taskId": "t", "state": "success", "resultJson": {"resultUrls": [None]}},
    ],
)
def test_from_payload_malformed_is_a_retryable_bad_response(data: Any) -> None:
    with pytest.raises(TransportError) as caught:
        TaskRecord.from_payload(data)
    assert caught.value.retryable
    assert "bad response" in str(caught.value)


def test_task_state_terminal() -> None:
    assert {state for state in TaskState if state.terminal} == {TaskState.SUCCESS, TaskState.FAIL}
    assert TaskState("queuing") is TaskState.QUEUING
    assert isinstance(TaskState.WAITING, str) and f"{TaskState.WAITING}" == "waiting"


# -- requests failures → error class (public client API, session stubbed to raise) ---------------------
class RaisingSession(requests.Session):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        raise self.error


def _refused() -> Exception:
    reason = NewConnectionError(None, "[Errno 111] Connection refused")  # type: ignore[arg-type]
    return requests.ConnectionError(MaxRetryError(None, "/api", reason))  # type: ignore[arg-type]


def _aborted() -> Exception:
    return requests.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")))


@pytest.mark.parametrize(
    ("error", "on_create", "on_read"),
    [
        (requests.ConnectTimeout("connect timed out"), TransportError, TransportError),
        (_refused(), TransportError, TransportError),
        (
            requests.ConnectionError(socket.gaierror(-2, "Name or service not known")),
            TransportError,
            TransportError,
        ),
        (requests.exceptions.SSLError("handshake failed"), TransportError, TransportError),
        (requests.exceptions.InvalidURL("bad url"), TransportError, TransportError),
        (requests.ReadTimeout("read timed out"), OutcomeUnknown, TransportError),
        (_aborted(), OutcomeUnknown, TransportError),
        (requests.exceptions.ChunkedEncodingError("IncompleteRead"), OutcomeUnknown, TransportError),
        (requests.ConnectionError("something unexpected"), OutcomeUnknown, TransportError),
    ],
)
def test_requests_failures_map_by_whether_the_request_may_have_been_sent(
    error: Exception, on_create: type[UpstreamError], on_read: type[UpstreamError]
) -> None:
    account = AccountSettings(name="acct", api_key=SecretStr(API_KEY), base_url="http://upstream.test")
    client = UpstreamClient(account, HttpSettings(), session=RaisingSession(error))

    with pytest.raises(UpstreamError) as created:
        client.create_task({"prompt": "a cat", "aspect_ratio": "2:3", "mode": "normal"})
    with pytest.raises(UpstreamError) as read:
        client.record_info("task-1")

    assert type(created.value) is on_create and created.value.__cause__ is error
    assert type(read.value) is on_read
    assert API_KEY not in str(created.value) + str(read.value)
    assert repr(client) == "UpstreamClient(account='acct')"


@pytest.mark.parametrize("code", [429, 455])
def test_rate_limits_and_maintenance_cool_the_whole_account_down(code: int) -> None:
    body, text = envelope(code)
    error = error_from_response(CREATE_TASK, 200, body, text, {})
    assert error is not None and error.cools_down_account


@pytest.mark.parametrize("code", [500, 502, 401, 402, 422, 501])
def test_other_errors_leave_the_account_alone(code: int) -> None:
    body, text = envelope(code)
    error = error_from_response(CREATE_TASK, 200, body, text, {})
    assert error is not None and not error.cools_down_account
