"""Callback verification as pure functions: per-job secret, HMAC signature, timestamp window, body."""

import base64
import json

import pytest

from producers.web.callbacks import (
    MAX_FUTURE_SKEW_S,
    CallbackRejected,
    Outcome,
    check_signature,
    check_token,
    parse_body,
    sign,
    token_hash,
)
from simulator.callbacks import sign as simulator_sign
from workers.upstream import TaskState

KEY = b"hmac-key"
NOW = 1_700_000_000.0


def _rejected(outcome: Outcome, call, *args, **kwargs) -> CallbackRejected:
    with pytest.raises(CallbackRejected) as caught:
        call(*args, **kwargs)
    assert caught.value.outcome is outcome
    return caught.value


def test_the_right_secret_passes_and_a_wrong_or_missing_one_is_refused():
    check_token("s3cret", token_hash("s3cret"))
    _rejected(Outcome.BAD_TOKEN, check_token, "s3cret!", token_hash("s3cret"))
    _rejected(Outcome.BAD_TOKEN, check_token, "s3cret", None)  # no hash recorded: nothing matches
    _rejected(Outcome.BAD_TOKEN, check_token, "", "")


def test_our_signature_is_the_one_the_simulator_sends():
    assert sign(KEY, "task-1", "1700000000") == simulator_sign(KEY.decode(), "task-1", "1700000000")


def test_a_fresh_correct_signature_passes():
    ts = str(int(NOW) - 10)
    check_signature(KEY, "task-1", ts, sign(KEY, "task-1", ts), now_s=NOW, max_age_s=300)


@pytest.mark.parametrize(
    "signature",
    [
        sign(b"another-key", "task-1", str(int(NOW))),  # forged with the wrong key
        sign(KEY, "task-2", str(int(NOW))),  # replayed for another task
        sign(KEY, "task-1", str(int(NOW) - 1)),  # the timestamp header was altered
        base64.b64encode(b"x" * 32).decode(),
        "not base64 at all!",
        "",
    ],
)
def test_a_forged_signature_is_refused(signature):
    _rejected(
        Outcome.BAD_SIGNATURE,
        check_signature,
        KEY,
        "task-1",
        str(int(NOW)),
        signature,
        now_s=NOW,
        max_age_s=300,
    )


def test_missing_headers_are_refused():
    _rejected(Outcome.BAD_SIGNATURE, check_signature, KEY, "t", None, "x", now_s=NOW, max_age_s=300)
    _rejected(Outcome.BAD_SIGNATURE, check_signature, KEY, "t", "1", None, now_s=NOW, max_age_s=300)


def test_a_stale_timestamp_is_refused_even_when_correctly_signed():
    ts = str(int(NOW) - 301)
    _rejected(Outcome.STALE, check_signature, KEY, "t", ts, sign(KEY, "t", ts), now_s=NOW, max_age_s=300)
    ts = str(int(NOW) - 300)
    check_signature(KEY, "t", ts, sign(KEY, "t", ts), now_s=NOW, max_age_s=300)


def test_a_timestamp_from_the_future_is_refused_beyond_the_skew():
    ts = str(int(NOW) + MAX_FUTURE_SKEW_S + 1)
    _rejected(Outcome.STALE, check_signature, KEY, "t", ts, sign(KEY, "t", ts), now_s=NOW, max_age_s=300)
    ts = str(int(NOW) + MAX_FUTURE_SKEW_S)
    check_signature(KEY, "t", ts, sign(KEY, "t", ts), now_s=NOW, max_age_s=300)


def test_a_signed_timestamp_that_is_not_a_number_is_refused():
    ts = "yesterday"
    _rejected(Outcome.STALE, check_signature, KEY, "t", ts, sign(KEY, "t", ts), now_s=NOW, max_age_s=300)


def _body(code: int = 200, **data) -> bytes:
    return json.dumps({"code": code, "msg": "m", "data": data}).encode()


def test_a_success_body_gives_the_result_url():
    data, record = parse_body(
        _body(
            taskId="t1",
            state="success",
            resultJson=json.dumps({"resultUrls": ["http://x/1.mp4"]}),
            completeTime=1700000000123,
        )
    )
    assert data["taskId"] == "t1"
    assert record.task_id == "t1" and record.state is TaskState.SUCCESS
    assert record.result_urls == ("http://x/1.mp4",)
    assert record.complete_time_ms == 1700000000123


def test_task_id_in_snake_case_is_accepted():
    _, record = parse_body(_body(task_id="t2", state="fail", failCode="500", failMsg="boom"))
    assert record.task_id == "t2" and record.state is TaskState.FAIL
    assert (record.fail_code, record.fail_msg) == ("500", "boom")


def test_code_501_means_failure_whatever_the_state_says():
    _, record = parse_body(_body(501, taskId="t3", state="success", failCode="x", failMsg="y"))
    assert record.state is TaskState.FAIL


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"{}",
        json.dumps({"code": 200, "data": "x"}).encode(),
        _body(state="success"),
        _body(taskId="t", state="exploded"),
        b"\xff\xfe",
    ],
)
def test_a_body_that_is_not_a_callback_is_refused(body):
    _rejected(Outcome.BAD_BODY, parse_body, body)


def test_a_body_nested_too_deeply_is_a_bad_body_not_a_crash():
    deep = b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    _rejected(Outcome.BAD_BODY, parse_body, deep)


def test_refusals_map_to_http_statuses_and_the_rest_to_200():
    assert Outcome.UNKNOWN_JOB.status == 404
    assert Outcome.BAD_TOKEN.status == 403
    assert Outcome.BAD_SIGNATURE.status == Outcome.STALE.status == 401
    assert Outcome.BAD_BODY.status == 400
    for outcome in (Outcome.WOKEN, Outcome.DUPLICATE, Outcome.REPLAYED, Outcome.EARLY, Outcome.IGNORED):
        assert outcome.status == 200
