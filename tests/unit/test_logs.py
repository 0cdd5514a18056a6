"""Log lines: one per event with the job id, text or JSON, and no secret in any of them."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from config.settings import ConfigError, Settings, load_settings
from workers.logs import _SHAPES, REDACTED, Redactor, configure_logging, secrets_of

API_KEY = "sk-LEAKCHECK-unit-0123456789"
JOB = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # no stray .env
    return load_settings(
        api_key=API_KEY,
        ingress_tokens=["ingress-token-abcdef-0123456789"],
        callbacks={"hmac_key": "hmac-key-abcdef"},
        s3={"access_key_id": "AKIAEXAMPLEKEY", "secret_access_key": "s3-secret-abcdef"},
    )


@pytest.fixture
def capture(settings: Settings) -> Iterator[tuple[io.StringIO, logging.Logger]]:
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handler = configure_logging(
        settings.model_copy(update={"log_format": "json"}), service="test", level="DEBUG", stream=stream
    )
    try:
        yield stream, logging.getLogger("imagineq.test")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_every_configured_secret_is_known(settings: Settings) -> None:
    assert set(secrets_of(settings)) >= {
        API_KEY,
        "ingress-token-abcdef-0123456789",
        "hmac-key-abcdef",
        "AKIAEXAMPLEKEY",
        "s3-secret-abcdef",
    }


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        (f"key {API_KEY} used", "key *** used", API_KEY),
        ("Authorization: Bearer abcdefghijkl0123", "Bearer ***", "abcdefghijkl0123"),
        ("headers {'Authorization': 'Basic YWRtaW46cHc='}", "Basic ***", "YWRtaW46cHc="),
        (
            "GET https://b.s3.amazonaws.com/v.mp4?X-Amz-Signature=ff00&X-Amz-Expires=60 200",
            "https://b.s3.amazonaws.com/v.mp4?*** 200",
            "ff00",
        ),
        ("redis://:hunter2pw@redis:6379/0", "redis://:***@redis:6379/0", "hunter2pw"),
        (f"POST /v1/callbacks/{JOB}/tok3n5ecret HTTP/1.1", f"/v1/callbacks/{JOB}/***", "tok3n5ecret"),
        ("IMAGINEQ_API_KEY=sk-other-key-999", "IMAGINEQ_API_KEY=***", "sk-other-key-999"),
        ('{"password": "pw-123456"}', '"password": "***"', "pw-123456"),
    ],
)
def test_redactor_removes_secrets_by_value_and_by_shape(text: str, kept: str, gone: str) -> None:
    redacted = Redactor([API_KEY]).redact(text)
    assert kept in redacted and gone not in redacted


_FRAGMENTS = (
    "Bearer ",
    "bEaReR ",
    "Authorization: ",
    "basic ",
    "Basic_Auth=",
    "https://h/p",
    "redis://u:",
    "@",
    "?",
    " ",
    "/v1/callbacks/",
    "Signature=",
    "x-amz-security-token: ",
    "API-KEY:",
    "apikey='",
    "secret =",
    "PASSWD=",
    'password": "',
    "hmac_key=",
    "token=",
    "abcdefgh12345678",
    "x",
    "&",
)


@hypothesis_settings(max_examples=300)
@given(st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=4), max_size=8).map("".join))
def test_the_marker_shortcut_never_changes_a_redaction(text: str) -> None:
    """Lines without any shape marker skip the shapes; applying every shape anyway must give the same."""
    full = text
    for pattern, replacement in _SHAPES:
        full = pattern.sub(replacement, full)
    assert Redactor().redact(text) == full


def test_ordinary_text_is_left_alone() -> None:
    text = f"submit: job {JOB} → task abc on account default; basic auth on; Bearer tokens accepted"
    assert Redactor(["local"]).redact(text) == text  # a too-short "secret" would shred words


def test_json_lines_carry_the_job_id_and_never_a_secret(capture: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = capture
    log.info("submit: job %s → task %s", JOB, "t1")
    log.warning("upstream said %s", {"Authorization": f"Bearer {API_KEY}"}, extra={"job_id": JOB})
    try:
        raise RuntimeError(f"boom with {API_KEY} and s3-secret-abcdef")
    except RuntimeError:
        log.exception("store: job %s failed", JOB)
    # Celery's own "received" line names the job only in its args.
    log.info("Task %(name)s[%(id)s] received", {"name": "imagineq.poll", "id": "u1", "args": f"('{JOB}',)"})
    records = lines(stream)
    assert [r["job_id"] for r in records] == [JOB] * 4
    assert all({"ts", "level", "logger", "service", "msg"} <= set(r) for r in records)
    assert "Traceback" in str(records[2]["exc"])
    text = stream.getvalue()
    assert API_KEY not in text and "s3-secret-abcdef" not in text and REDACTED in text


def test_text_lines_name_the_job(settings: Settings) -> None:
    stream = io.StringIO()
    handler = configure_logging(settings, service="test", level="INFO", stream=stream)
    try:
        logging.getLogger("celery.worker.strategy").info(
            "Task %(name)s[%(id)s] received", {"name": "imagineq.submit", "id": "u1", "args": f"('{JOB}',)"}
        )
    finally:
        logging.getLogger().removeHandler(handler)
    [line] = stream.getvalue().splitlines()
    assert line.endswith(f"Task imagineq.submit[u1] received job={JOB}")


def test_log_settings_are_validated(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    assert load_settings(log_level="debug").log_level == "DEBUG"
    with pytest.raises(ConfigError, match="log_format"):
        load_settings(log_format="xml")


def test_text_lines_cannot_be_forged_with_cr_or_lf(settings: Settings) -> None:
    stream = io.StringIO()
    handler = configure_logging(settings, service="test", level="INFO", stream=stream)
    forged = "abc\n2026-12-01 10:00:00,000 INFO imagineq.http [MainProcess] job abc stored\rtoo"
    try:
        logging.getLogger("imagineq.test").warning("callback for job %s refused", forged)
        try:
            raise ValueError("a message\nover two lines")
        except ValueError:
            logging.getLogger("imagineq.test").exception("failed on %s", "x\ny")
    finally:
        logging.getLogger().removeHandler(handler)
    records = [line for line in stream.getvalue().splitlines() if not line.startswith("    ")]
    assert len(records) == 2  # every other line is an indented part of the traceback
    assert records[0].endswith(
        "callback for job abc\\n2026-12-01 10:00:00,000 INFO imagineq.http [MainProcess] job abc stored\\rtoo refused"
    )
    assert records[1].endswith("failed on x\\ny")
    assert "    ValueError: a message" in stream.getvalue() and "\n    over two lines" in stream.getvalue()
