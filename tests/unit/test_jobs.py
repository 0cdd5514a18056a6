"""Jobs, pure: request validation, the transition table, the record's round trip through a hash."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import ValidationError
from core.jobs import (
    TERMINAL_STATES,
    TRANSITIONS,
    Job,
    JobRequest,
    JobState,
    Priority,
    allowed_from,
    nesting_depth,
)

S = JobState


# -- validation --------------------------------------------------------------------------------------
BAD_REQUESTS = [
    ({"prompt": 42}, "prompt", "must be a string (got int)"),
    ({"prompt": "   \n"}, "prompt", "must not be empty"),
    ({"prompt": "x" * 5001}, "prompt", "must be at most 5000 characters (got 5001)"),
    ({"aspect_ratio": "4:3"}, "aspect_ratio", "must be one of 2:3, 3:2, 1:1, 16:9, 9:16 (got '4:3')"),
    ({"aspect_ratio": 1.5}, "aspect_ratio", "must be a string (got float)"),
    ({"mode": "wild"}, "mode", "must be one of fun, normal, spicy (got 'wild')"),
    ({"metadata": ["a"]}, "metadata", "must be an object (got list)"),
    ({"metadata": {1: "a"}}, "metadata", "keys must be strings"),
    ({"metadata": {"x": {1}}}, "metadata", "must be JSON-serialisable (Object of type set is not JSON serializable)"),
    ({"metadata": {"x": "y" * 16400}}, "metadata", "must be at most 16384 bytes as JSON (got 16408)"),
    ({"metadata": {"a": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}}, "metadata", "must be nested at most 16 levels deep"),
    ({"priority": "urgent"}, "priority", "must be one of interactive, batch (got 'urgent')"),
    ({"idempotency_key": ""}, "idempotency_key", "must be 1 to 200 characters (got 0)"),
    ({"idempotency_key": "k" * 201}, "idempotency_key", "must be 1 to 200 characters (got 201)"),
    ({"idempotency_key": 7}, "idempotency_key", "must be a string or null (got int)"),
    ({"batch_id": ["b"]}, "batch_id", "must be a string or null (got list)"),
]


@pytest.mark.parametrize(("changes", "field", "message"), BAD_REQUESTS)
def test_bad_request_names_the_field_and_the_limit(changes, field, message):
    # Given a request with one bad field, through both doors
    data = {"prompt": "a cat surfing", **changes}
    # Then validate() and from_mapping() refuse it with the same field and message
    for build in (lambda: JobRequest(**data).validate(), lambda: JobRequest.from_mapping(data)):
        with pytest.raises(ValidationError) as caught:
            build()
        assert (caught.value.field, caught.value.message) == (field, message)


def test_prompt_of_exactly_5000_chars_and_every_choice_pass():
    for ratio in ("2:3", "3:2", "1:1"):
        for mode in ("fun", "normal", "spicy"):
            JobRequest("é" * 5000, aspect_ratio=ratio, mode=mode).validate()
    JobRequest("p", metadata={"nested": {"a": [1, 2.5, None, True]}}, idempotency_key="k" * 200).validate()


def test_from_mapping_fills_defaults_and_converts_priority():
    request = JobRequest.from_mapping({"prompt": "p", "priority": "batch", "mode": None, "batch_id": "b1"})
    assert request == JobRequest("p", priority=Priority.BATCH, batch_id="b1")


def test_from_mapping_names_unknown_fields():
    with pytest.raises(ValidationError) as caught:
        JobRequest.from_mapping({"prompt": "p", "seed": 1, "style": 6})
    assert caught.value.field == "seed, style"
    assert caught.value.message.startswith("unknown fields for text-to-video; allowed: model, metadata, ")
    with pytest.raises(ValidationError) as caught:
        JobRequest.from_mapping({"model": "text-to-image", "prompt": "p", "duration": 6})
    assert caught.value.field == "duration"
    assert "allowed: model, metadata, priority, idempotency_key, batch_id, notify_url, prompt, aspect_ratio" in str(
        caught.value
    )


def test_from_mapping_requires_a_prompt_and_an_object():
    with pytest.raises(ValidationError, match=r"^prompt: is required by grok-imagine/text-to-video$"):
        JobRequest.from_mapping({"mode": "fun"})
    with pytest.raises(ValidationError, match=r"^request: must be an object \(got list\)$"):
        JobRequest.from_mapping(["prompt"])  # type: ignore[arg-type]


# -- transition table --------------------------------------------------------------------------------
def test_table_covers_every_state_without_self_loops():
    assert set(TRANSITIONS) == set(JobState)
    for source, targets in TRANSITIONS.items():
        assert source not in targets


def test_terminal_states_have_no_exits_except_failed():
    assert {s for s in JobState if s.terminal} == TERMINAL_STATES == {S.STORED, S.FAILED, S.EXPIRED, S.CANCELED}
    for state in TERMINAL_STATES - {S.FAILED}:
        assert TRANSITIONS[state] == frozenset()
    assert TRANSITIONS[S.FAILED] == {S.QUEUED, S.DOWNLOADING}


def test_a_submitting_job_cannot_be_canceled_and_the_happy_path_is_allowed():
    assert S.CANCELED not in TRANSITIONS[S.SUBMITTING]
    path = [S.QUEUED, S.SUBMITTING, S.GENERATING, S.DOWNLOADING, S.STORED]
    for source, target in itertools.pairwise(path):
        assert target in TRANSITIONS[source]
        assert source in allowed_from(target)


def test_every_state_is_reachable_from_the_first_ones():
    # A job starts queued, or waiting for its parent.
    seen, frontier = {S.QUEUED, S.WAITING}, [S.QUEUED, S.WAITING]
    while frontier:
        for target in TRANSITIONS[frontier.pop()]:
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(JobState)


# -- record ------------------------------------------------------------------------------------------
def test_round_trip_through_a_hash_of_a_full_job():
    job = Job(
        id="abc",
        state=S.STORED,
        prompt="p",
        input={"aspect_ratio": "1:1", "mode": "spicy", "duration": "10", "resolution": "720p"},
        metadata={"k": [1]},
        priority=Priority.BATCH,
        idempotency_key="idem",
        batch_id="b",
        account="acct",
        task_id="t1",
        attempts=2,
        submit_attempts=1,
        poll_errors=3,
        store_attempts=1,
        reason=None,
        error=None,
        fail_code=None,
        fail_msg=None,
        result_url="https://x/y.mp4",
        result_urls=["https://x/y.mp4"],
        s3_uri="s3://b/k",
        size=0,
        sha256="00ff",
        outputs=[{"index": 0, "uri": "s3://b/k", "size": 0, "sha256": "00ff", "content_type": "video/mp4"}],
        callback_token_hash="h",
        created_at=1700000000.5,
        updated_at=1700000100.25,
        timestamps={"queued": 1700000000.5, "generating": 1700000010.0, "stored": 1700000100.25},
        extra={"claim": "w1", "create_sent_at": "1700000001.0"},
    )
    data = job.to_hash()
    assert "at_queued" not in data and "reason" not in data  # implied by created_at / empty: not stored
    assert Job.from_hash(data) == job
    assert Job.from_hash({k.encode(): v.encode() for k, v in data.items()}) == job


def test_a_record_from_before_the_catalog_reads_as_a_text_to_video_job_with_one_output():
    job = Job.from_hash(
        {
            "id": "j",
            "state": "stored",
            "prompt": "p",
            "aspect_ratio": "1:1",
            "mode": "fun",
            "result_url": "https://x/y.mp4",
            "s3_uri": "s3://b/k",
            "size": "3",
            "sha256": "ab",
        }
    )
    assert (job.model, job.aspect_ratio, job.mode, job.extra) == ("text-to-video", "1:1", "fun", {})
    assert job.values == {"prompt": "p", "aspect_ratio": "1:1", "mode": "fun"}
    assert job.result_urls == ["https://x/y.mp4"]
    assert job.outputs == [{"index": 0, "uri": "s3://b/k", "size": 3, "sha256": "ab"}]
    job.request.validate()  # it can be made again (resubmitted, copied) as it was


def test_minimal_hash_reads_with_defaults():
    job = Job.from_hash({"id": "j", "state": "queued", "prompt": "p", "created_at": "12.5"})
    assert (job.updated_at, job.timestamps, job.attempts, job.metadata) == (12.5, {"queued": 12.5}, 0, {})
    assert job.priority is Priority.INTERACTIVE and job.size is None and not job.terminal


def test_to_dict_is_json_safe_and_hides_the_callback_token_hash():
    job = Job.new(JobRequest("p", metadata={"a": 1}), job_id="j", created_at=5.0)
    job.callback_token_hash = "secret-ish"
    data = json.loads(json.dumps(job.to_dict()))
    assert data["state"] == "queued" and data["priority"] == "interactive"
    assert data["timestamps"] == {"queued": 5.0} and data["metadata"] == {"a": 1}
    assert "callback_token_hash" not in data


@given(
    prompt=st.text(min_size=1, max_size=50).filter(str.strip),
    metadata=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
    extra=st.dictionaries(st.sampled_from(["claim", "x_y"]), st.text(min_size=1, max_size=5), max_size=2),
    counters=st.tuples(*(st.integers(0, 10**6) for _ in range(4))),
)
def test_round_trip_property(prompt, metadata, extra, counters):
    job = Job.new(JobRequest(prompt, metadata=metadata), job_id="j", created_at=1.25)
    job.attempts, job.submit_attempts, job.poll_errors, job.store_attempts = counters
    job.extra = extra
    assert Job.from_hash(job.to_hash()) == job


def test_metadata_may_nest_exactly_to_the_cap():
    at_cap = {"a": [[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]}
    assert nesting_depth(at_cap) == 16
    JobRequest(prompt="a cat", metadata=at_cap).validate()
    assert nesting_depth(1) == 0 and nesting_depth({}) == 1 and nesting_depth({"a": [{}]}) == 3
