"""The bad-input table: every way a user can hand ImagineQ something wrong, and exactly what they see.

One row per input, checked on the surface the user meets it on — the Python API (``ValidationError``
naming the field and the limit), the CLI (exit code + stderr), the HTTP ingress (4xx body), a batch
(the report of bad lines), the job record (a failed job's ``reason`` and ``error``) — and, for every
row, that nothing was written: Redis job keys and queue lists, the batch's jobs and S3 objects are as
before. docs/reliability.md renders this table.

Real servers throughout: a private Redis, a SeaweedFS S3 server, the web process under uvicorn, a tiny local
HTTP server standing in for a misbehaving result URL or upstream.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, cast

import psutil
import pytest
import redis
import requests
from pydantic import SecretStr

from config.settings import ConfigError, HttpSettings, S3Settings, Settings, get_settings, load_settings
from core.errors import TransportError, ValidationError
from core.jobs import JobRequest, JobState
from core.jobstore import JobStore
from core.keys import Keys
from core.quota import QuotaLimiter
from devstack import services
from devstack.services import LocalStack
from producers import cli
from producers.api import Producer
from producers.exit_codes import EXIT_OK, EXIT_USAGE
from producers.web.callbacks import sign, token_hash
from tests.conftest import S3_TEST_CREDENTIALS, local_files, s3_client_for
from workers.batch.reader import BAD_LINES_KEPT, BatchSubmitter
from workers.storage import BadResult, ResultTooLarge, Storage, StorageError
from workers.upstream import UpstreamClient

pytestmark = pytest.mark.integration

TOKEN = "bad-input-token-7Kq2Xw9ZpL4m"
HMAC_KEY = "bad-input-hmac"
MAX_BODY = 1024 * 1024
AUTH = {"Authorization": f"Bearer {TOKEN}"}
COUNTERS = "iq:counters"


# -- what "nothing was written" means ----------------------------------------------------------------------


def redis_snapshot(client: redis.Redis) -> dict[bytes, bytes | None]:
    """Every key and its serialised value, except the metrics counters (refusals are counted there)."""
    keys = cast("list[bytes]", client.keys("*"))
    return {
        key: cast("bytes | None", client.dump(key)) for key in sorted(keys) if key not in (COUNTERS, COUNTERS.encode())
    }


@contextlib.contextmanager
def nothing_written(client: redis.Redis, s3: Callable[[], list[str]] | None = None) -> Iterator[None]:
    before, objects = redis_snapshot(client), (s3() if s3 else [])
    yield
    assert redis_snapshot(client) == before, "Redis changed"
    if s3 is not None:
        assert s3() == objects, "S3 changed"


# -- fixtures ----------------------------------------------------------------------------------------------


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return load_settings(redis_url=redis_url, api_key="sim-key")


@pytest.fixture
def producer(settings: Settings) -> Iterator[Producer]:
    made = Producer(settings)
    yield made
    made.close()


@pytest.fixture
def raw_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The CLI in this process, configured only by IMAGINEQ_* variables (no stray .env)."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("IMAGINEQ_"):
            monkeypatch.delenv(name)
    env = {"IMAGINEQ_REDIS_URL": redis_url, "IMAGINEQ_API_KEY": "sim-key"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def web_url(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with services.terminate_on_signals(), LocalStack(tmp_path_factory.mktemp("bad-input-web")) as stack:
        env = {
            "IMAGINEQ_REDIS_URL": redis_server,
            "IMAGINEQ_API_KEY": "sim-key",
            "IMAGINEQ_INGRESS_TOKENS": json.dumps([TOKEN]),
            "IMAGINEQ_INGRESS_MAX_BODY_BYTES": str(MAX_BODY),
            "IMAGINEQ_CALLBACKS__HMAC_KEY": HMAC_KEY,
            "IMAGINEQ_CALLBACKS__MAX_AGE_S": "300",
        }
        yield services.start_web(stack, env).url


@pytest.fixture
def web(web_url: str, redis_url: str) -> str:
    return web_url  # redis_url: the database is flushed before each test


# -- 1. one request, on every surface ----------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    """An object nested ``depth`` levels deep: ``{"a": {"a": ... {}}}``."""
    document: dict[str, Any] = {}
    for _ in range(depth - 1):
        document = {"a": document}
    return document


#: (case, request fields, the error every surface gives: "field: message"). The model's declaration checks
#: them all, so the Python API, HTTP (422, loc = the field), batch lines and the CLI say the same.
REQUEST_CASES = [
    ("empty prompt", {"prompt": ""}, "prompt: must not be empty"),
    ("blank prompt", {"prompt": "  \n\t "}, "prompt: must not be empty"),
    ("5,001-character prompt", {"prompt": "x" * 5001}, "prompt: must be at most 5000 characters (got 5001)"),
    ("prompt of the wrong type", {"prompt": 42}, "prompt: must be a string (got int)"),
    ("prompt missing", {"mode": "fun"}, "prompt: is required by grok-imagine/text-to-video"),
    (
        "unknown aspect ratio",
        {"prompt": "a cat", "aspect_ratio": "4:3"},
        "aspect_ratio: must be one of 2:3, 3:2, 1:1, 16:9, 9:16 (got '4:3')",
    ),
    ("unknown mode", {"prompt": "a cat", "mode": "wild"}, "mode: must be one of fun, normal, spicy (got 'wild')"),
    (
        # 1.5 KB, well under the size cap: it was written, then every reader of it answered 500.
        "metadata nested 256 levels deep",
        {"prompt": "a cat", "metadata": nested(256)},
        "metadata: must be nested at most 16 levels deep",
    ),
    (
        "unpaired surrogate (text that is not UTF-8)",
        {"prompt": "a cat \ud800"},
        "prompt: must be valid UTF-8 text (unpaired surrogate at character 6)",
    ),
    # -- the other fields of the family ------------------------------------------------------------------
    (
        "unknown model",
        {"model": "text-to-music", "prompt": "a cat"},
        "model: must be one of text-to-video, image-to-video, text-to-image, image-to-image, upscale, extend "
        "(got 'text-to-music')",
    ),
    ("duration not offered", {"prompt": "a cat", "duration": "7"}, "duration: must be one of 6, 10, 15 (got '7')"),
    ("duration of the wrong type", {"prompt": "a cat", "duration": 6.5}, "duration: must be a string (got float)"),
    (
        "resolution not offered",
        {"prompt": "a cat", "resolution": "1080p"},
        "resolution: must be one of 480p, 720p (got '1080p')",
    ),
    (
        "a field another model has",
        {"model": "text-to-image", "prompt": "a cat", "mode": "fun"},
        "mode: unknown field for text-to-image; allowed: model, metadata, priority, idempotency_key, batch_id, "
        "notify_url, prompt, aspect_ratio",
    ),
    (
        "image-to-video without an image",
        {"model": "image-to-video", "prompt": "a cat"},
        "image: is required (or a parent: a text-to-image job, with an index)",
    ),
    (
        "image-to-video with an image and a parent",
        {"model": "image-to-video", "image": "https://example.com/a.png", "parent": "ab" * 16},
        "image: give an image or a parent job (a text-to-image job and an index), not both",
    ),
    (
        "index without a parent",
        {"model": "image-to-video", "image": "https://example.com/a.png", "index": 1},
        "index: goes with a parent job only (image N of that job's images)",
    ),
    (
        "index out of range",
        {"model": "image-to-video", "parent": "ab" * 16, "index": 6},
        "index: must be 0 to 5 (got 6)",
    ),
    (
        "spicy with an image of one's own",
        {"model": "image-to-video", "image": "https://example.com/a.png", "mode": "spicy"},
        "mode: spicy is not available with an image of your own (only from a parent job)",
    ),
    (
        "an image that is not a URL",
        {"model": "image-to-video", "image": "ftp://example.com/a.png"},
        "image: url must be an http(s) URL (got 'ftp://example.com/a.png')",
    ),
    (
        "an image that is not an image",
        {"model": "image-to-video", "image": {"base64": "R0lGODlhAQABAAAAACw="}},
        "image: must be a JPEG, PNG or WEBP image (judged by its content)",
    ),
    (
        "an image of another bucket",
        {"model": "image-to-video", "image": "s3://someone-else/a.png"},
        "image: s3 must name an object of this deployment's bucket (imagineq)",
    ),
    (
        "six images to change",
        {"model": "image-to-image", "images": ["https://example.com/a.png"] * 6},
        "images: must be 1 to 5 images (got 6)",
    ),
    (
        "nsfw_checker not a boolean",
        {"model": "image-to-image", "images": ["https://example.com/a.png"], "nsfw_checker": "yes"},
        "nsfw_checker: must be true or false (got str)",
    ),
    ("upscale without a parent", {"model": "upscale"}, "parent: is required by grok-imagine/upscale"),
    (
        "a parent that is no job id",
        {"model": "upscale", "parent": "not a job"},
        "parent: must be an ImagineQ job id, 32 hex characters (got 'not a job')",
    ),
    ("a parent that does not exist", {"model": "upscale", "parent": "ab" * 16}, f"parent: no job {'ab' * 16}"),
    (
        "extend_times not offered",
        {"model": "extend", "parent": "ab" * 16, "extend_times": "7"},
        "extend_times: must be one of 6, 10 (got '7')",
    ),
    (
        "extend_at below zero",
        {"model": "extend", "parent": "ab" * 16, "extend_at": -1},
        "extend_at: must be 0 to 60 (got -1)",
    ),
]


def http_loc(message: str) -> list[Any]:
    """The 422's loc for an error ``field: message``: the body, then the field's path."""
    field = message.split(": ", 1)[0]
    name, _, index = field.partition("[")
    return ["body", name, int(index[:-1])] if index else ["body", name]


@pytest.mark.parametrize(
    ("fields", "message"), [(c[1], c[2]) for c in REQUEST_CASES], ids=[c[0] for c in REQUEST_CASES]
)
def test_python_api_names_the_field_and_the_limit_and_writes_nothing(
    producer: Producer, raw_redis: redis.Redis, fields: dict[str, Any], message: str
) -> None:
    with nothing_written(raw_redis), pytest.raises(ValidationError) as raised:
        if "prompt" in fields and "model" not in fields:
            producer.enqueue(**fields)
        else:  # a mapping (decoded JSON) in a list: the error names the item
            producer.enqueue_many([fields])
    assert str(raised.value) == (message if "prompt" in fields and "model" not in fields else f"requests[0].{message}")


def test_python_api_refuses_the_whole_list_when_one_item_is_bad(producer: Producer, raw_redis: redis.Redis):
    with nothing_written(raw_redis), pytest.raises(ValidationError) as raised:
        producer.enqueue_many([{"prompt": "fine"}, {"prompt": "fine", "colour": "red"}])
    assert str(raised.value) == (
        "requests[1].colour: unknown field for text-to-video; allowed: model, metadata, priority, idempotency_key, "
        "batch_id, notify_url, prompt, aspect_ratio, mode, duration, resolution"
    )


@pytest.mark.parametrize(
    ("fields", "message"), [(c[1], c[2]) for c in REQUEST_CASES], ids=[c[0] for c in REQUEST_CASES]
)
def test_http_answers_422_naming_the_field_and_writes_nothing(
    web: str, raw_redis: redis.Redis, fields: dict[str, Any], message: str
) -> None:
    body = json.dumps(fields)  # ensure_ascii: a surrogate travels as the JSON escape "\ud800"
    with nothing_written(raw_redis):
        response = requests.post(
            f"{web}/v1/jobs", data=body, headers={**AUTH, "Content-Type": "application/json"}, timeout=30
        )
    assert response.status_code == 422, response.text
    [issue] = response.json()["detail"]
    assert issue == {"loc": http_loc(message), "msg": message.split(": ", 1)[1], "type": "value_error"}


def test_http_unknown_field_is_422_naming_it(web: str, raw_redis: redis.Redis):
    with nothing_written(raw_redis):
        response = requests.post(f"{web}/v1/jobs", json={"prompt": "a cat", "colour": "red"}, headers=AUTH, timeout=30)
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "loc": ["body", "colour"],
            "msg": "unknown field for text-to-video; allowed: model, metadata, priority, idempotency_key, "
            "batch_id, notify_url, prompt, aspect_ratio, mode, duration, resolution",
            "type": "value_error",
        }
    ]


@pytest.mark.parametrize(
    ("fields", "message"), [(c[1], c[2]) for c in REQUEST_CASES], ids=[c[0] for c in REQUEST_CASES]
)
def test_a_batch_reports_the_bad_line_and_keeps_the_good_ones(
    settings: Settings, tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    source = tmp_path / "one-bad.jsonl"
    lines = [{"prompt": "good before", "id": "a"}, {**fields, "id": "b"}, {"prompt": "good after", "id": "c"}]
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = submit_batch(settings, source)
    assert (result.status.lines, result.status.good, result.status.bad) == (3, 2, 1)
    assert [(bad.line, bad.id, bad.error) for bad in result.bad_lines] == [(2, "b", message)]
    assert jobs_written(settings) == 2


def test_a_batch_line_with_unknown_fields_is_reported(settings: Settings, tmp_path: Path):
    source = tmp_path / "unknown.jsonl"
    source.write_text('{"prompt": "a cat", "colour": "red"}\n{"prompt": "a cat", "priority": "interactive"}\n')
    result = submit_batch(settings, source)
    assert [bad.error for bad in result.bad_lines] == [
        "colour: unknown field for text-to-video; allowed: model, metadata, priority, idempotency_key, batch_id, "
        "notify_url, prompt, aspect_ratio, mode, duration, resolution",
        "unknown field(s) priority; the batch sets them",
    ]
    assert jobs_written(settings) == 0


#: (case, argv, stderr) — exit code 2 (usage) for each.
CLI_CASES = [
    ("empty prompt", ["submit", ""], "error: prompt: must not be empty\n"),
    ("5,001-character prompt", ["submit", "x" * 5001], "error: prompt: must be at most 5000 characters (got 5001)\n"),
    (
        "unknown aspect ratio",
        ["submit", "a cat", "--aspect-ratio", "4:3"],
        "error: aspect_ratio: must be one of 2:3, 3:2, 1:1, 16:9, 9:16 (got '4:3')\n",
    ),
    (
        "unknown model",
        ["submit", "a cat", "--model", "text-to-music"],
        "error: model: must be one of text-to-video, image-to-video, text-to-image, image-to-image, upscale, "
        "extend (got 'text-to-music')\n",
    ),
    (
        "resolution not offered",
        ["submit", "a cat", "--resolution", "1080p"],
        "error: resolution: must be one of 480p, 720p (got '1080p')\n",
    ),
    ("a field twice", ["submit", "a cat", "--field", "oops"], "error: --field 'oops': must be NAME=VALUE\n"),
    (
        "unknown mode",
        ["submit", "a cat", "--mode", "wild"],
        "error: mode: must be one of fun, normal, spicy (got 'wild')\n",
    ),
]


@pytest.mark.parametrize(("argv", "stderr"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_exits_2_with_the_field_and_the_limit(
    cli_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    raw_redis: redis.Redis,
    argv: list[str],
    stderr: str,
) -> None:
    with nothing_written(raw_redis):
        assert run_cli(capsys, *argv) == (EXIT_USAGE, stderr)


def test_cli_argument_that_is_not_utf8_exits_2(redis_url: str, raw_redis: redis.Redis, tmp_path: Path):
    """A real process: the shell hands over bytes, Python turns the bad one into a surrogate."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("IMAGINEQ_")}
    env.update(IMAGINEQ_REDIS_URL=redis_url, IMAGINEQ_API_KEY="sim-key", LC_ALL="C.UTF-8")
    with nothing_written(raw_redis):
        done = subprocess.run(
            [sys.executable, "-m", "producers.cli", "submit", b"a cat \xff"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
        )
    assert done.returncode == EXIT_USAGE
    assert done.stderr == b"error: prompt: must be valid UTF-8 text (unpaired surrogate at character 6)\n"


# -- 2. bodies and files that are not what they claim ------------------------------------------------------


def test_http_body_that_is_not_utf8_is_400(web: str, raw_redis: redis.Redis):
    with nothing_written(raw_redis):
        response = requests.post(
            f"{web}/v1/jobs",
            data=b'{"prompt": "a cat \xff"}',
            headers={**AUTH, "Content-Type": "application/json"},
            timeout=30,
        )
    assert response.status_code == 400
    assert response.json() == {"detail": "There was an error parsing the body"}


def test_http_body_that_is_not_json_is_422(web: str, raw_redis: redis.Redis):
    with nothing_written(raw_redis):
        response = requests.post(
            f"{web}/v1/jobs",
            data=b'{"prompt": "a cat"',
            headers={**AUTH, "Content-Type": "application/json"},
            timeout=30,
        )
    assert response.status_code == 422
    [issue] = response.json()["detail"]
    assert issue["type"] == "json_invalid" and issue["loc"][0] == "body"


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_http_body_over_the_limit_is_413(web: str, raw_redis: redis.Redis, declared: bool):
    body = json.dumps([{"prompt": "y" * 4000}] * 300).encode()  # ≈ 1.2 MB > 1 MiB
    assert len(body) > MAX_BODY
    payload: bytes | Iterator[bytes] = (
        body if declared else iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
    )
    with nothing_written(raw_redis):
        response = requests.post(
            f"{web}/v1/jobs", data=payload, headers={**AUTH, "Content-Type": "application/json"}, timeout=30
        )
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body larger than {MAX_BODY} bytes"}


def test_a_batch_with_broken_json_and_non_utf8_lines_reports_each(settings: Settings, tmp_path: Path):
    source = tmp_path / "broken.jsonl"
    source.write_bytes(
        b'{"prompt": "good one"}\n{"prompt": "no end\n\xff\xfe{"prompt": "x"}\n[1, 2]\n{"prompt": "good two"}\n'
    )
    result = submit_batch(settings, source)
    assert [(bad.line, bad.error) for bad in result.bad_lines] == [
        (2, "invalid JSON: Unterminated string starting at: line 1 column 12 (char 11)"),
        (3, "not valid UTF-8"),
        (4, "must be a JSON object (got list)"),
    ]
    assert (result.status.good, result.status.bad) == (2, 3)
    assert jobs_written(settings) == 2


def test_cli_batch_submit_prints_the_bad_lines(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "cli.jsonl"
    source.write_bytes(b'{"prompt": "good"}\n{"prompt": \n')
    code, err = run_cli(capsys, "batch", "submit", str(source))
    assert code == EXIT_OK  # the good lines went through; the bad one is reported, not a failure
    assert "2 lines read, 1 good, 1 bad, 1 new job" in err
    assert "line 2: invalid JSON: Expecting value" in err


def test_a_10_mb_line_is_reported_without_being_read_whole(settings: Settings, tmp_path: Path):
    source = tmp_path / "long-line.jsonl"
    with source.open("wb") as out:
        out.write(b'{"prompt": "before"}\n{"prompt": "')
        out.write(b"z" * (10 * 1024 * 1024))
        out.write(b'"}\n{"prompt": "after"}\n')
    with peak_rss() as grown:
        result = submit_batch(settings, source)
    assert [(bad.line, bad.error) for bad in result.bad_lines] == [
        (2, f"line is longer than {settings.batch_max_line_bytes} bytes")
    ]
    assert (result.status.good, result.status.bad) == (2, 1)
    assert grown() < 8 * 1024 * 1024  # read in bounded pieces, never the 10 MB at once


def test_a_million_lines_stream_in_chunks_with_flat_memory(settings: Settings, tmp_path: Path):
    """1,000,000 lines: 1,000 good (one per 1,000) and 999,000 broken. What the user sees: every line is
    accounted for (a job or a reported error), the report keeps the first BAD_LINES_KEPT bad lines (the
    batch record and manifest have them all), and memory stays flat while it streams."""
    source = tmp_path / "million.jsonl"
    with source.open("wb") as out:
        for block in range(1000):
            out.write(b'{"prompt": "good line %d"}\n' % block + b"[]\n" * 999)
    chunks: list[int] = []
    with peak_rss() as grown:
        result = submit_batch(settings, source, on_chunk=chunks.append)
    status = result.status
    assert (status.lines, status.good, status.bad, status.created) == (1_000_000, 1000, 999_000, 1000)
    assert len(result.bad_lines) == BAD_LINES_KEPT
    assert result.bad_lines[0].line == 2 and result.bad_lines[0].error == "must be a JSON object (got list)"
    assert len(chunks) >= 250 and chunks[-1] == 1_000_000  # accepted in chunks, progress after each
    client = redis.Redis.from_url(settings.redis_url)
    assert client.llen(f"iq:batch:{status.id}:jobs") == 1_000_000
    # About 2.5 MB is seen; holding the file's lines at once would take ~45 MB (a million bytes objects).
    assert grown() < 16 * 1024 * 1024


# -- 3. callbacks ------------------------------------------------------------------------------------------


@pytest.fixture
def generating(settings: Settings) -> Iterator[tuple[str, str, str]]:
    """A job as submit leaves it: lease held, callback token hash and taskId recorded."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    keys = Keys("iq")
    jobs, quota = JobStore(client, keys), QuotaLimiter(client, keys, settings.accounts)
    job, _ = jobs.create(JobRequest(prompt="a callback"))
    assert jobs.transition(job.id, JobState.SUBMITTING, expect=JobState.QUEUED)
    assert quota.acquire_slot(job.id).account == "default"
    jobs.update(
        job.id, expect=JobState.SUBMITTING, fields={"account": "default", "callback_token_hash": token_hash("secret")}
    )
    assert jobs.transition(job.id, JobState.GENERATING, expect=JobState.SUBMITTING, fields={"task_id": "t-1"})
    yield job.id, "secret", "t-1"
    client.close()


def callback_body(task_id: str) -> bytes:
    data = {"taskId": task_id, "state": "success", "resultJson": json.dumps({"resultUrls": ["http://x/v.mp4"]})}
    return json.dumps({"code": 200, "msg": "ok", "data": data}).encode()


def signed(task_id: str, at: float | None = None, key: str = HMAC_KEY) -> dict[str, str]:
    ts = str(int(time.time() if at is None else at))
    return {"X-Webhook-Timestamp": ts, "X-Webhook-Signature": sign(key.encode(), task_id, ts)}


#: (case, path suffix, body, headers factory, status, msg, counter)
CALLBACK_CASES: list[tuple[str, str, Callable[[str], bytes], Callable[[str], dict[str, str]], int, str, str]] = [
    (
        "forged signature",
        "{job}/{token}",
        callback_body,
        lambda t: signed(t, key="not-the-key"),
        401,
        "signature does not match",
        "bad_signature",
    ),
    (
        "unsigned",
        "{job}/{token}",
        callback_body,
        lambda t: {},
        401,
        "X-Webhook-Timestamp and X-Webhook-Signature required",
        "bad_signature",
    ),
    (
        "replayed (stale) timestamp",
        "{job}/{token}",
        callback_body,
        lambda t: signed(t, time.time() - 301),
        401,
        "timestamp older than 300s",
        "stale",
    ),
    (
        "unknown job",
        "0123456789abcdef0123456789abcdef/{token}",
        callback_body,
        signed,
        404,
        "unknown job",
        "unknown_job",
    ),
    ("wrong per-job secret", "{job}/not-the-secret", callback_body, signed, 403, "wrong callback secret", "bad_token"),
    (
        "malformed body (not JSON)",
        "{job}/{token}",
        lambda t: b"{code: 200",
        signed,
        400,
        "body is not JSON",
        "bad_body",
    ),
    (
        "malformed body (no data)",
        "{job}/{token}",
        lambda t: b'{"code": 200}',
        signed,
        400,
        "body must be an object with a data object",
        "bad_body",
    ),
    (
        "malformed body (no taskId)",
        "{job}/{token}",
        lambda t: b'{"code": 200, "data": {"state": "success"}}',
        signed,
        400,
        "no taskId",
        "bad_body",
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "msg", "counter"),
    [c[1:] for c in CALLBACK_CASES],
    ids=[c[0] for c in CALLBACK_CASES],
)
def test_a_refused_callback_changes_nothing(
    web: str,
    raw_redis: redis.Redis,
    generating: tuple[str, str, str],
    path: str,
    body: Callable[[str], bytes],
    headers: Callable[[str], dict[str, str]],
    status: int,
    msg: str,
    counter: str,
) -> None:
    job_id, token, task_id = generating
    url = f"{web}/v1/callbacks/" + path.format(job=job_id, token=token)
    with nothing_written(raw_redis):  # job still generating, lease held, no store message, nothing stashed
        response = requests.post(url, data=body(task_id), headers=headers(task_id), timeout=30)
    assert (response.status_code, response.json()) == (status, {"code": status, "msg": msg})
    assert cast("bytes | None", raw_redis.hget(COUNTERS, f"callback:{counter}")) == b"1"


# -- 4. result URLs that are not a video we may store ------------------------------------------------------


class _Results(BaseHTTPRequestHandler):
    """``/redirect-ftp``, ``/html``, ``/big`` (announced), ``/big-chunked`` (not announced)."""

    def do_GET(self) -> None:
        if self.path == "/redirect-ftp":
            self.send_response(302)
            self.send_header("Location", "ftp://files.example/video.mp4")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/html":
            body = b"<html><body>Please log in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(2 * CAP))
            self.end_headers()
            self.wfile.write(b"\0" * (2 * CAP))
        elif self.path == "/big-chunked":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(4):
                piece = b"\0" * (CAP // 2)
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/record-html":
            body = b"<html>502 Bad Gateway</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args: Any) -> None:
        pass


CAP = 6 * 1024 * 1024  # above one 5 MB part, so the unannounced body goes through the multipart path


class _Upstream(BaseHTTPRequestHandler):
    """recordInfo answers that are not what the API documents (the path picks which)."""

    answers: ClassVar[dict[str, tuple[int, str, bytes]]] = {
        "html": (200, "text/html", b"<html>502 Bad Gateway</html>"),
        "no-state": (200, "application/json", b'{"code": 200, "msg": "ok", "data": {"taskId": "t-1"}}'),
        "no-data": (200, "application/json", b'{"code": 200, "msg": "ok"}'),
        "other-task": (
            200,
            "application/json",
            b'{"code": 200, "msg": "ok", "data": {"taskId": "t-2", "state": "success"}}',
        ),
        "bad-result": (
            200,
            "application/json",
            b'{"code": 200, "data": {"taskId": "t-1", "state": "success", "resultJson": "{oops"}}',
        ),
    }

    def do_GET(self) -> None:
        status, kind, body = self.answers[self.path.split("/")[1]]
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_server() -> Iterator[Callable[[type[BaseHTTPRequestHandler]], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(handler: type[BaseHTTPRequestHandler]) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start  # type: ignore[misc]
    for server in servers:
        server.shutdown()
        server.server_close()


RESULT_CASES = [
    (
        "redirect to a non-http scheme",
        "/redirect-ftp",
        BadResult,
        "bad_result",
        "redirect to a non-http(s) URL (ftp:) ({url}/redirect-ftp)",
    ),
    (
        "HTML instead of a video",
        "/html",
        BadResult,
        "bad_result",
        "result is text/html, not one of video/* (downloads.content_types) ({url}/html)",
    ),
    (
        "larger than the cap (announced)",
        "/big",
        ResultTooLarge,
        "too_large",
        f"result is {2 * CAP} bytes, over the cap of {CAP} ({{url}}/big)",
    ),
    (
        "larger than the cap (while streaming)",
        "/big-chunked",
        ResultTooLarge,
        "too_large",
        f"result exceeds the cap of {CAP} bytes while streaming ({{url}}/big-chunked)",
    ),
]


@pytest.mark.parametrize(
    ("path", "error", "reason", "message"), [c[1:] for c in RESULT_CASES], ids=[c[0] for c in RESULT_CASES]
)
def test_a_result_url_we_must_not_store_fails_the_job_and_writes_no_object(
    s3_endpoint: str,
    s3_bucket: str,
    http_server: Callable[[type[BaseHTTPRequestHandler]], str],
    path: str,
    error: type[StorageError],
    reason: str,
    message: str,
) -> None:
    base = http_server(_Results)
    s3 = S3Settings(
        bucket=s3_bucket,
        endpoint_url=s3_endpoint,
        max_download_bytes=CAP,
        part_size_mb=5,
        access_key_id=SecretStr(S3_TEST_CREDENTIALS["aws_access_key_id"]),
        secret_access_key=SecretStr(S3_TEST_CREDENTIALS["aws_secret_access_key"]),
    )
    storage = Storage(s3, HttpSettings(), downloads=local_files(base))
    client = s3_client_for(s3_endpoint)

    def objects() -> list[str]:
        return [item["Key"] for item in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]

    with pytest.raises(error) as raised:
        storage.store(
            job_id="j1",
            task_id="t1",
            account="default",
            url=base + path,
            created_at=datetime.now(UTC),
            prompt_sha256="0" * 64,
            sidecar={},
        )
    assert objects() == [] and client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert (raised.value.reason, raised.value.retryable) == (reason, False)  # the store task fails the job
    assert str(raised.value) == message.format(url=base)


# -- 5. recordInfo answers that are not what the API documents ---------------------------------------------

RECORD_CASES = [
    ("not JSON (an HTML error page)", "html", "recordInfo: bad response: not a JSON object (HTTP 200) (HTTP 200)"),
    ("no state", "no-state", "recordInfo: bad response: no state"),
    ("no data", "no-data", "recordInfo: bad response: data is NoneType, not an object"),
    ("another task's record", "other-task", "recordInfo: bad response: asked for task t-1, got t-2"),
    ("resultJson that is not JSON", "bad-result", "recordInfo: bad response: resultJson is not JSON"),
]


@pytest.mark.parametrize(("path", "message"), [c[1:] for c in RECORD_CASES], ids=[c[0] for c in RECORD_CASES])
def test_a_garbled_record_info_is_a_retryable_bad_response(
    http_server: Callable[[type[BaseHTTPRequestHandler]], str], path: str, message: str
) -> None:
    """The poll keeps the lease and asks again later (``poll_errors`` counts); the job never fails on it."""
    settings = load_settings(api_key="sim-key", upstream_base_url=http_server(_Upstream) + f"/{path}")
    with UpstreamClient(settings.accounts[0], settings.http) as client, pytest.raises(TransportError) as raised:
        client.record_info("t-1")
    assert raised.value.retryable
    assert str(raised.value) == message


# -- 6. settings -------------------------------------------------------------------------------------------

SETTINGS_CASES = [
    (
        "negative limit",
        {"IMAGINEQ_QUOTA_WAIT_MAX_S": "-1"},
        "Invalid configuration:\n  quota_wait_max_s [IMAGINEQ_QUOTA_WAIT_MAX_S]: Input should be greater than 0 "
        "(got '-1')\n",
    ),
    (
        "negative account limit",
        {"IMAGINEQ_ACCOUNTS": json.dumps([{"name": "a", "api_key": "k", "max_in_progress": -5}])},
        "Invalid configuration:\n  accounts.0.max_in_progress [IMAGINEQ_ACCOUNTS]: Input should be greater than "
        "or equal to 1 (got -5)\n",
    ),
    (
        "negative size cap",
        {"IMAGINEQ_S3__MAX_DOWNLOAD_BYTES": "-1"},
        "Invalid configuration:\n  s3.max_download_bytes [IMAGINEQ_S3]: Input should be greater than or equal to 1 "
        "(got '-1')\n",
    ),
    (
        "mistyped Redis URL, password hidden",
        {"IMAGINEQ_REDIS_URL": "http://:hunter2@127.0.0.1:6379/0"},
        "Invalid configuration:\n  redis_url [IMAGINEQ_REDIS_URL]: Value error, must be a redis://, rediss://, "
        "unix:// or sentinel:// URL, not http:// (got 'http://127.0.0.1:6379/0')\n",
    ),
]

#: Every command that needs Redis, with Redis unreachable.
REDIS_COMMANDS = [
    ["submit", "a cat"],
    ["job", "0123456789abcdef"],
    ["resubmit", "0123456789abcdef"],
    ["batch", "list"],
]


@pytest.mark.parametrize(
    "argv",
    REDIS_COMMANDS,
    ids=["submit", "job", "resubmit", "batch list"],
)
def test_cli_without_redis_says_so_in_one_line_and_exits_2(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    # A loopback port nothing listens on (reserved, then closed).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("IMAGINEQ_REDIS_URL", f"redis://:hunter2@127.0.0.1:{port}/0")
    get_settings.cache_clear()
    code, err = run_cli(capsys, *argv)
    assert code == EXIT_USAGE
    assert err.startswith(f"error: Redis at redis://127.0.0.1:{port}/0 (IMAGINEQ_REDIS_URL): ")
    assert err.count("\n") == 1 and "hunter2" not in err and "Traceback" not in err


@pytest.mark.parametrize(("env", "stderr"), [c[1:] for c in SETTINGS_CASES], ids=[c[0] for c in SETTINGS_CASES])
def test_cli_with_bad_settings_exits_2_and_lists_the_field(
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    raw_redis: redis.Redis,
    env: dict[str, str],
    stderr: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with nothing_written(raw_redis):
        assert run_cli(capsys, "submit", "a cat") == (EXIT_USAGE, stderr)


def test_a_worker_without_an_api_key_refuses_to_start(redis_url: str, tmp_path: Path):
    env = {name: value for name, value in os.environ.items() if not name.startswith("IMAGINEQ_")}
    env["IMAGINEQ_REDIS_URL"] = redis_url
    done = subprocess.run(
        services.worker_argv("submit", concurrency=1), env=env, cwd=tmp_path, capture_output=True, timeout=120
    )
    assert done.returncode == 2, done.stderr.decode(errors="replace")[-2000:]
    assert done.stderr.decode().endswith(
        "Invalid configuration:\n  accounts: no upstream account configured; set IMAGINEQ_API_KEY or "
        "IMAGINEQ_ACCOUNTS\n"
    )


def test_a_notify_worker_needs_no_api_key(redis_url: str, tmp_path: Path):
    """Notify calls no upstream, and deployments give it no key: it starts without one."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("IMAGINEQ_")}
    env["IMAGINEQ_REDIS_URL"] = redis_url
    log = tmp_path / "notify.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            services.worker_argv("notify", concurrency=1), env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 90
        while b" ready." not in log.read_bytes():
            assert worker.poll() is None, log.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "the notify worker never became ready"
            time.sleep(0.2)
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def test_the_settings_object_refuses_a_missing_key_for_upstream_processes():
    with pytest.raises(ConfigError, match="no upstream account configured; set IMAGINEQ_API_KEY"):
        Settings(_env_file=None).require_accounts()  # type: ignore[call-arg]


# -- helpers -----------------------------------------------------------------------------------------------


def submit_batch(settings: Settings, source: Path, **options: Any) -> Any:
    submitter = BatchSubmitter(settings)
    try:
        return submitter.submit(str(source), **options)
    finally:
        submitter.close()


def jobs_written(settings: Settings) -> int:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return sum(1 for key in client.scan_iter("iq:job:*") if key.count(b":") == 2)
    finally:
        client.close()


@contextlib.contextmanager
def peak_rss() -> Iterator[Callable[[], int]]:
    """How much this process's RSS grew at its peak while the block ran (sampled every 20 ms)."""
    process = psutil.Process()
    base = process.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: peak[0] - base
    finally:
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], process.memory_info().rss)
