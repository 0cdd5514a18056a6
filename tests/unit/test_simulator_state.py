"""Simulator logic without HTTP: a hand-driven clock makes quotas and timing exact."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from simulator.accounts import Account, key_id
from simulator.arguments import parse_args
from simulator.errors import ApiError
from simulator.faults import Faults, parse_force_status
from simulator.files import CHUNK_BYTES, FTYP_BOX, UrlSigner, expected_sha256, iter_chunks
from simulator.options import SimOptions, apply_overrides
from simulator.quota import InProgressSet, SlidingWindowLog
from simulator.state import SimState
from simulator.tasks import Task, TaskState
from simulator.validation import validate_create

MODEL = "grok-imagine/text-to-video"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def body(prompt: str = "a cat", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": {"prompt": prompt}, **extra}


def make_state(**overrides: Any) -> tuple[SimState, Clock, Account]:
    options = SimOptions(seed=1, **overrides)
    clock = Clock()
    state = SimState(options, clock=clock)
    return state, clock, state.authenticate("Bearer sim-key")


# -- quota primitives -----------------------------------------------------------------------------


def test_sliding_window_prunes_entries_older_than_the_window() -> None:
    log = SlidingWindowLog()
    for t in (0.0, 1.0, 2.0):
        log.record(t)
    assert log.count(2.0, window=10) == 3
    assert log.seconds_until_free(2.0, window=10) == pytest.approx(8.0)
    assert log.count(10.5, window=10) == 2  # t=0 left the window at t=10
    assert log.count(12.0, window=10) == 0
    assert log.seconds_until_free(12.0, window=10) == 0.0


def test_in_progress_set_counts_until_completion() -> None:
    s = InProgressSet()
    s.add(5.0, "a")
    s.add(3.0, "b")
    assert s.count(0.0) == 2
    assert s.seconds_until_free(1.0) == pytest.approx(2.0)
    assert s.count(3.0) == 1
    assert s.count(5.0) == 0


# -- task timing ----------------------------------------------------------------------------------


def test_task_state_follows_elapsed_fraction() -> None:
    task = Task(
        task_id="t" * 32,
        key_id="k",
        model=MODEL,
        param={},
        callback_url=None,
        created_at=100.0,
        complete_at=110.0,
        cost_ms=10_000,
        video_bytes=10,
        url_ttl_wall_s=60,
    )
    assert task.state_at(100.0) is TaskState.WAITING
    assert task.state_at(100.99) is TaskState.WAITING
    assert task.state_at(101.0) is TaskState.QUEUING
    assert task.state_at(102.0) is TaskState.GENERATING
    assert task.state_at(109.99) is TaskState.GENERATING
    assert task.state_at(110.0) is TaskState.SUCCESS
    assert task.updated_at(101.5) == pytest.approx(101.0)
    assert task.updated_at(105.0) == pytest.approx(102.0)
    record = task.record(105.0, [])
    assert record["completeTime"] is None and record["costTime"] is None
    done = task.record(111.0, ["http://x/f.mp4"])
    assert json.loads(done["resultJson"]) == {"resultUrls": ["http://x/f.mp4"]}
    assert done["costTime"] == 10_000 and done["completeTime"] == 110_000


# -- SimState -------------------------------------------------------------------------------------


def test_in_progress_quota_429_with_retry_after_until_a_task_completes() -> None:
    state, clock, account = make_state(max_in_progress=2, gen_time=(10.0, 10.0))
    state.create_task(account, body())
    clock.now += 3
    state.create_task(account, body())
    with pytest.raises(ApiError) as e:
        state.create_task(account, body())
    assert e.value.code == 429 and e.value.retry_after_s == 7
    clock.now += 7
    state.create_task(account, body())
    assert state.stats.peak_in_progress == 2
    assert state.stats.rate_limited == 0  # counted by the HTTP layer via stats.error


def test_window_quota_slides_with_time_scale() -> None:
    state, clock, account = make_state(max_per_window=3, window_s=3600, time_scale=60, gen_time=(0, 0))
    for _ in range(3):
        state.create_task(account, body())
        clock.now += 10
    with pytest.raises(ApiError) as e:
        state.create_task(account, body())
    assert e.value.code == 429 and e.value.retry_after_s == 30  # 60 s wall window, first at t-30
    clock.now += 30
    state.create_task(account, body())
    assert state.snapshot()["max_creations_in_window"] == 3


def test_each_task_takes_its_price_and_one_the_balance_cannot_pay_is_refused_402() -> None:
    # 6 s at 480p costs 6 x 2.4 = 14.4; 10 s at 720p 10 x 4.5 = 45; a text-to-image task 4.
    state, _, account = make_state(credits=60, gen_time=(0, 0))
    state.create_task(account, body())
    assert state.credit(account) == pytest.approx(45.6)
    state.create_task(account, {"model": MODEL, "input": {"prompt": "x", "duration": "10", "resolution": "720p"}})
    assert state.credit(account) == pytest.approx(0.6)
    with pytest.raises(ApiError) as e:
        state.create_task(account, {"model": "grok-imagine/text-to-image", "input": {"prompt": "x"}})
    assert e.value.code == 402 and "costs 4" in e.value.msg
    assert state.snapshot()["per_key"][account.key_id]["credits_spent"] == pytest.approx(59.4)
    state.reset()
    assert state.credit(state.authenticate("Bearer sim-key")) == 60


def test_records_report_consumed_credits_only_when_switched_on() -> None:
    state, clock, account = make_state(gen_time=(0, 0))
    quiet = state.create_task(account, body())
    state.configure({"report_credits": True, "credits": {account.key_id: 100}})
    told = state.create_task(account, body())
    clock.now += 1
    assert "consumeCredits" not in state.record_info(account, quiet.task_id)
    assert state.record_info(account, told.task_id)["consumeCredits"] == pytest.approx(14.4)
    assert state.credit(account) == pytest.approx(85.6)
    with pytest.raises(ValueError, match="no key with id"):
        state.configure({"credits": {"nobody": 5}})


def test_validation_before_credits_and_quota() -> None:
    state, _, account = make_state(credits=0, max_in_progress=0)
    with pytest.raises(ApiError) as e:
        state.create_task(account, {"model": MODEL, "input": {"prompt": ""}})
    assert e.value.code == 422
    with pytest.raises(ApiError) as e:
        state.create_task(account, body())
    assert e.value.code == 402


def test_moderation_and_fail_rate_decided_at_creation() -> None:
    state, clock, account = make_state(gen_time=(1, 1), fail_rate=1.0)
    moderated = state.create_task(account, body("NSFW-TEST clip"))
    failed = state.create_task(account, body())
    assert moderated.fail_code == "content_moderation" and "nsfw-test" in moderated.fail_msg
    assert failed.fail_code == "500"
    assert state.record_info(account, moderated.task_id)["state"] != "fail"
    clock.now += 1
    assert state.record_info(account, moderated.task_id)["state"] == "fail"


def test_keys_are_isolated_and_never_shown() -> None:
    options = SimOptions(api_keys=["a-key", "b-key"], max_in_progress=1, gen_time=(5, 5), seed=3)
    state = SimState(options, clock=Clock())
    a, b = state.authenticate("Bearer a-key"), state.authenticate("bearer b-key")
    task = state.create_task(a, body())
    state.create_task(b, body())  # b has its own in-progress quota
    with pytest.raises(ApiError) as e:
        state.record_info(b, task.task_id)
    assert e.value.code == 404
    with pytest.raises(ApiError) as e:
        state.authenticate("Bearer c-key")
    assert e.value.code == 401
    snapshot = json.dumps(state.snapshot())
    assert "a-key" not in snapshot and key_id("a-key") in snapshot


def test_result_url_expires_and_download_url_refreshes() -> None:
    state, clock, account = make_state(gen_time=(1, 1), url_ttl_s=10, download_url_ttl_s=20)
    task = state.create_task(account, body())
    clock.now += 1
    url = json.loads(state.record_info(account, task.task_id)["resultJson"])["resultUrls"][0]
    token = url.rsplit("/", 1)[1].removesuffix(".mp4")
    assert state.file_for(task.task_id, token) is task
    clock.now += 10
    with pytest.raises(ApiError) as e:
        state.file_for(task.task_id, token)
    assert e.value.code == 403
    fresh = state.download_url(account, {"url": url})
    assert state.file_for(task.task_id, fresh.rsplit("/", 1)[1].removesuffix(".mp4")) is task
    with pytest.raises(ApiError) as e:
        state.file_for(task.task_id, "1-" + "0" * 32)
    assert e.value.code == 404


def test_seed_makes_runs_reproducible() -> None:
    ids = []
    for _ in range(2):
        state, _, account = make_state(gen_time=(1, 9))
        ids.append([(t.task_id, t.cost_ms) for t in (state.create_task(account, body()) for _ in range(3))])
    assert ids[0] == ids[1]


# -- files, options, faults, validation -----------------------------------------------------------


def test_file_bytes_are_deterministic_and_streamed_in_chunks() -> None:
    size = 2 * CHUNK_BYTES + 123
    chunks = list(iter_chunks("a" * 32, size))
    assert [len(c) for c in chunks] == [CHUNK_BYTES, CHUNK_BYTES, 123]
    assert chunks[0].startswith(FTYP_BOX)
    data = b"".join(chunks)
    assert hashlib.sha256(data).hexdigest() == expected_sha256("a" * 32, size)
    assert expected_sha256("b" * 32, size) != expected_sha256("a" * 32, size)
    assert b"".join(iter_chunks("a" * 32, 10)) == data[:10]


def test_url_signer_rejects_tampering() -> None:
    signer = UrlSigner(b"k")
    token = signer.token("t", 100.0)
    assert signer.check("t", token, 99.0) == "ok"
    assert signer.check("t", token, 100.0) == "expired"
    assert signer.check("u", token, 99.0) == "invalid"
    assert signer.check("t", "200000-" + token.split("-")[1], 99.0) == "invalid"


def test_cli_defaults_and_flags() -> None:
    d = parse_args([])
    assert (d.port, d.max_in_progress, d.max_per_window, d.window_s) == (8900, 30, 300, 3600)
    assert d.api_keys == ["sim-key"] and d.credits == -1 and d.gen_time == (10, 25)
    o = parse_args(
        [
            "--api-key",
            "x",
            "--api-key",
            "y",
            "--gen-time",
            "0.2:0.4",
            "--time-scale",
            "60",
            "--moderation-words",
            "Foo, bar",
            "--error-style",
            "http",
        ]
    )
    assert o.api_keys == ["x", "y"] and o.gen_time == (0.2, 0.4)
    assert o.wall(3600) == 60 and o.moderation_words == ["foo", "bar"]
    with pytest.raises(SystemExit):
        parse_args(["--gen-time", "5:1"])


def test_apply_overrides_is_all_or_nothing() -> None:
    options = SimOptions()
    with pytest.raises(ValueError, match="fail_rate"):
        apply_overrides(options, {"max_in_progress": 5, "fail_rate": 2})
    assert options.max_in_progress == 30
    changed = apply_overrides(options, {"max_in_progress": 5, "gen_time": [1, 2]})
    assert changed == ["max_in_progress", "gen_time"]
    assert options.gen_time == (1.0, 2.0)


def test_forced_status_rules_are_consumed() -> None:
    faults = Faults()
    faults.rules = parse_force_status({"code": 500, "count": 2, "endpoint": "createTask"})
    assert faults.take("recordInfo") is None
    assert [r.code if (r := faults.take("createTask")) else None for _ in range(3)] == [500, 500, None]
    faults.rules = parse_force_status([{"code": 503, "count": -1}])
    assert all(faults.take(e) is not None for e in ("files", "credit", "files"))
    assert parse_force_status({"code": 429})[0].retry_after_s == 1
    with pytest.raises(ValueError, match="endpoint"):
        parse_force_status({"code": 500, "endpoint": "nope"})


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ([], "JSON object"),
        ({"model": MODEL, "input": "x"}, "input must be an object"),
        ({"model": MODEL, "input": {"prompt": 3}}, "input.prompt must be a string"),
        ({"model": MODEL, "input": {"prompt": "  "}}, "input.prompt must not be empty"),
    ],
)
def test_validation_messages(payload: Any, needle: str) -> None:
    with pytest.raises(ApiError) as e:
        validate_create(payload, _no_parent, _any_image)
    assert e.value.code == 422 and needle in e.value.msg


def test_validation_defaults() -> None:
    req = validate_create({"model": MODEL, "callBackUrl": "", "input": {"prompt": "p"}}, _no_parent, _any_image)
    checked = req.checked
    assert (checked.aspect_ratio, checked.mode, checked.duration_s, checked.resolution) == ("2:3", "normal", 6, "480p")
    assert req.callback_url is None


def _no_parent(field: str, task_id: str) -> Any:
    raise ApiError(422, f"{field}: no task {task_id}")


def _any_image(field: str, url: str) -> None:
    return None


# -- recordInfo rate -------------------------------------------------------------------------------


def test_record_info_over_its_rate_in_any_rolling_second_is_refused_with_429() -> None:
    state, clock, account = make_state(record_info_per_s=10)
    task = state.create_task(account, body())
    for _ in range(10):
        state.record_info(account, task.task_id)
        clock.now += 0.05  # 10 calls within 0.5 s
    with pytest.raises(ApiError) as refused:
        state.record_info(account, task.task_id)
    assert refused.value.code == 429
    clock.now += 0.51  # the first call left the rolling second
    state.record_info(account, task.task_id)
    stats = state.snapshot()["per_key"][account.key_id]
    assert stats["record_info_rate_limited"] == 1
    assert stats["max_record_info_per_s"] == 11  # the refused call arrived too


def test_record_info_rate_can_be_lifted() -> None:
    state, _, account = make_state(record_info_per_s=0)
    task = state.create_task(account, body())
    for _ in range(50):
        state.record_info(account, task.task_id)
    assert state.snapshot()["per_key"][account.key_id]["record_info_rate_limited"] == 0
