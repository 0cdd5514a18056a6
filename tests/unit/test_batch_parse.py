"""Reading batch lines: every bad line is reported with its number, good lines become batch requests."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.schedule import NIGHTLY_ENTRY, RECONCILE_ENTRY, beat_config
from config.settings import ConfigError, load_settings
from core.jobs import KEY_MAX_CHARS, Priority
from core.keys import Keys
from workers.batch.lines import LineParser, batch_id_for, idempotency_key, iter_lines
from workers.batch.locations import Location

MAX = 1024


def parse_all(text: bytes, batch_id: str = "b1", max_bytes: int = MAX):
    parser = LineParser(batch_id, max_bytes=max_bytes)
    parsed = (parser.parse(number, raw) for number, raw in iter_lines(io.BytesIO(text), max_bytes))
    return [line for line in parsed if line is not None]


def test_good_lines_become_batch_requests_keyed_by_batch_and_line_id():
    text = b'{"prompt": "a cat", "id": "c1", "mode": "fun", "metadata": {"k": 1}}\n{"prompt": "a dog"}\n'
    first, second = parse_all(text)
    assert first.request is not None and second.request is not None
    assert first.request.priority is Priority.BATCH and first.request.batch_id == "b1"
    assert first.request.idempotency_key == "batch:b1:id:c1"
    assert first.request.metadata == {"k": 1} and first.request.mode == "fun"
    assert second.request.idempotency_key == "batch:b1:line:2"
    assert (first.line, first.id, second.line, second.id) == (1, "c1", 2, None)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b'["a list"]', "must be a JSON object (got list)"),
        (b'{"prompt": ""}', "prompt: must not be empty"),
        (b'{"prompt": "x", "mode": "wild"}', "mode: must be one of fun, normal, spicy"),
        (b'{"prompt": "x", "aspect_ratio": "4:3"}', "aspect_ratio: must be one of"),
        (b'{"aspect_ratio": "1:1"}', "prompt: is required"),
        (b'{"prompt": "x", "priority": "interactive"}', "unknown field(s) priority"),
        (b'{"prompt": "x", "id": true}', "id: must be a string or an integer"),
        (b'{"prompt": "x", "id": ""}', "id: must be 1 to"),
        (b'{"prompt": "x", "metadata": [1]}', "metadata: must be an object"),
        (json.dumps({"prompt": "x" * 5001}).encode(), "prompt: must be at most 5000 characters"),
    ],
)
def test_each_kind_of_bad_line_is_reported_with_its_number(line, error):
    good = b'{"prompt": "fine"}'
    parsed = parse_all(b"\n".join([good, line, good]), max_bytes=16 * 1024)
    assert [p.line for p in parsed] == [1, 2, 3]
    assert parsed[0].request is not None and parsed[2].request is not None
    assert parsed[1].request is None
    assert parsed[1].error is not None and error in parsed[1].error


def test_a_repeated_id_is_a_bad_line_and_the_first_one_stays():
    parsed = parse_all(b'{"prompt": "a", "id": 7}\n{"prompt": "b", "id": "7"}\n{"prompt": "c", "id": 8}\n')
    assert parsed[0].request is not None and parsed[0].id == "7"
    assert parsed[1].request is None and parsed[1].error == "duplicate id '7' (first on line 1)"
    assert parsed[2].request is not None


def test_an_over_long_line_is_skipped_without_losing_the_lines_around_it():
    long_line = json.dumps({"prompt": "y" * (10 * MAX)}).encode()
    parsed = parse_all(b'{"prompt": "a"}\n' + long_line + b'\n{"prompt": "b"}')
    assert [p.line for p in parsed] == [1, 2, 3]
    assert parsed[1].error == f"line is longer than {MAX} bytes"
    assert parsed[2].request is not None and parsed[2].request.prompt == "b"


def test_blank_lines_and_crlf_endings_are_fine():
    parsed = parse_all(b'\r\n{"prompt": "a"}\r\n   \n{"prompt": "b"}\r\n')
    assert [(p.line, p.request is not None) for p in parsed] == [(2, True), (4, True)]


@given(st.lists(st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode)), max_size=30))
def test_any_bytes_give_one_outcome_per_non_blank_line(lines):
    text = b"\n".join(line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines)
    parsed = parse_all(text)
    expected = [i + 1 for i, raw in enumerate(text.split(b"\n")) if raw.strip()] if text else []
    assert [p.line for p in parsed] == expected
    assert all((p.request is None) != (p.error is None) for p in parsed)


def test_idempotency_keys_stay_within_the_limit_and_never_collide():
    long_id = "z" * KEY_MAX_CHARS
    key = idempotency_key("b" * 25, 3, long_id)
    assert len(key) <= KEY_MAX_CHARS
    assert idempotency_key("b1", 3, None) != idempotency_key("b1", 3, "3")


def test_batch_ids_follow_the_name_or_the_content():
    assert batch_id_for(name="nightly-2024-05-01", identity="") == "nightly-2024-05-01"
    assert batch_id_for(name="has spaces/and slashes", identity="").startswith("n")
    same = batch_id_for(name=None, identity="sha256:abc")
    assert same == batch_id_for(name=None, identity="sha256:abc") != batch_id_for(name=None, identity="sha256:abd")


def test_the_manifest_goes_next_to_the_input():
    assert Location.parse("s3://bkt/in/prompts.jsonl").results().uri == "s3://bkt/in/prompts.results.jsonl"
    assert Location.parse("/data/prompts.jsonl").results().uri == "/data/prompts.results.jsonl"
    assert Location.parse("s3://bkt/inbox").child("a.jsonl").uri == "s3://bkt/inbox/a.jsonl"


def test_beat_runs_the_reconciler_and_the_nightly_inbox_under_the_deployment_prefix():
    settings = load_settings(redis_prefix="dep1", inbox="s3://bkt/inbox/", reconcile_interval_s=60)
    conf = beat_config(settings)
    assert conf["redbeat_key_prefix"] == Keys("dep1").redbeat()
    assert conf["redbeat_lock_key"].startswith(conf["redbeat_key_prefix"])
    assert "redbeat_redis_url" not in conf  # redbeat uses broker_url, whose password Celery masks
    assert conf["beat_max_loop_interval"] < conf["redbeat_lock_timeout"]
    nightly = conf["beat_schedule"][NIGHTLY_ENTRY]["schedule"]
    assert (nightly.hour, nightly.minute) == ({2}, {0})
    assert conf["beat_schedule"][RECONCILE_ENTRY]["schedule"].total_seconds() == 60
    assert NIGHTLY_ENTRY not in beat_config(load_settings(inbox=None))["beat_schedule"]


def test_a_bad_cron_expression_is_refused():
    with pytest.raises(ConfigError, match="nightly_cron"):
        load_settings(nightly_cron="0 2 * *")


def test_a_line_nested_too_deeply_is_a_bad_line_not_a_crash():
    parser = LineParser("b", max_bytes=1_000_000)
    deep = b'{"prompt": "x", "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    parsed = parser.parse(7, deep)
    assert parsed is not None and parsed.request is None
    assert (parsed.line, parsed.error) == (7, "nested too deeply")
    assert parser.parse(8, b'{"prompt": "fine"}') is not None
