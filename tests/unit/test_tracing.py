"""When traces are on, and what a span may keep of a URL (core.tracing)."""

from __future__ import annotations

import pytest

from core.tracing import safe_path, safe_url, wanted
from workers.tasks.process import worker_role


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "otlp"}, True),
    ],
)
def test_traces_are_on_only_when_the_standard_variables_ask(environ: dict[str, str], on: bool) -> None:
    assert wanted(environ) is on


def test_a_url_keeps_no_query_credentials_or_tokens() -> None:
    presigned = "https://bucket.s3.example.com/jobs/a.mp4?X-Amz-Signature=abc&X-Amz-Credential=AKIA"
    assert safe_url(presigned) == "https://bucket.s3.example.com/jobs/a.mp4"
    assert safe_url("http://user:secret@api.example:8900/api/v1/jobs/createTask") == (
        "http://api.example:8900/api/v1/jobs/createTask"
    )
    signed = "http://127.0.0.1:8900/files/" + "a" * 32 + "/1733000000-" + "b" * 32 + ".mp4"
    assert safe_url(signed) == "http://127.0.0.1:8900/files/" + "a" * 32 + "/{token}"
    callback = "/v1/callbacks/" + "c" * 32 + "/" + "d" * 64 + "?x=1"
    assert safe_path(callback) == "/v1/callbacks/" + "c" * 32 + "/{token}"


def test_a_worker_is_named_by_its_queues() -> None:
    assert worker_role(["celery", "-A", "workers", "worker", "-Q", "submit", "-c", "4"]) == "submit"
    assert worker_role(["celery", "worker", "--queues=poll,store"]) == "poll+store"
    assert worker_role(["celery", "worker"]) == "worker"
