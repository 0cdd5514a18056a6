"""Traces with a real OTLP/HTTP receiver (the protobuf the exporters send, decoded here): one job enqueued over
HTTP and run by real workers is one trace, whose spans come from the web, submit, poll and store processes with
every parent link whole, and no span attribute holds the API key, the prompt, a signed URL or a token."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from core import tracing
from core.jobs import JobState
from devstack import services
from devstack.deployment import Deployment, deployment, must, wait_until

pytestmark = pytest.mark.integration

TOKEN = "tracing-test-token-0123456789abcdef"
API_KEY = "tracing-secret-api-key-0123456789"
PROMPT = "A lantern drifting over a frozen lake, traced"


class Receiver:
    """An OTLP/HTTP traces endpoint on loopback keeping every span it is sent, decoded."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.keep(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def keep(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    with self.lock:
                        self.spans.append(
                            {
                                "service": resource.get("service.name"),
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "attributes": {a.key: _value(a.value) for a in span.attributes},
                            }
                        )

    def trace(self, trace_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [span for span in self.spans if span["trace_id"] == trace_id]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind in ("string_value", "int_value", "double_value", "bool_value") else str(value)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.server.shutdown()


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Deployment]:
    with deployment(
        tmp_path_factory.mktemp("tracing"),
        simulator_args=("--gen-time", "0.3:0.8", "--video-bytes", "65536", "--api-key", API_KEY),
        env={
            "IMAGINEQ_API_KEY": API_KEY,
            "IMAGINEQ_INGRESS_TOKENS": json.dumps([TOKEN]),
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    ) as deployed:
        yield deployed


def test_one_job_is_one_connected_trace_across_the_processes_with_nothing_secret(dep: Deployment, receiver: Receiver):
    web = services.start_web(dep.stack, dep.env)
    made = requests.post(
        f"{web.url}/v1/jobs", json={"prompt": PROMPT}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    assert made.status_code == 201, made.text
    job = dep.producer.wait(made.json()["id"], timeout=90)
    assert job.state is JobState.STORED
    traceparent = must(job.extra.get(tracing.TRACE_FIELD))
    trace_id = traceparent.split("-")[1]
    wanted = {"imagineq-web", "imagineq-submit", "imagineq-poll", "imagineq-store"}

    def complete() -> bool:
        spans = receiver.trace(trace_id)
        return wanted <= {span["service"] for span in spans} and any(s["name"] == "imagineq.store" for s in spans)

    wait_until(complete, 30, "the job's spans from every process")
    spans = receiver.trace(trace_id)
    names = {span["name"] for span in spans}
    assert {"imagineq.enqueue", "imagineq.quota_wait", "imagineq.submit", "imagineq.poll", "imagineq.store"} <= names
    # One trace, whole: a single root (the enqueue), every other span's parent in the trace.
    ids = {span["span_id"] for span in spans}
    roots = [span for span in spans if not span["parent_span_id"]]
    assert [root["name"] for root in roots] == ["imagineq.enqueue"]
    assert all(span["parent_span_id"] in ids for span in spans if span["parent_span_id"])
    # The upstream calls and the S3 upload are spans of the steps (the maintained instrumentations).
    by_id = {span["span_id"]: span for span in spans}
    children = {(by_id[s["parent_span_id"]]["name"], s["service"]) for s in spans if s["parent_span_id"] in by_id}
    assert ("imagineq.submit", "imagineq-submit") in children and ("imagineq.store", "imagineq-store") in children
    submit = next(span for span in spans if span["name"] == "imagineq.submit")
    assert submit["attributes"]["job.id"] == job.id and submit["attributes"]["job.outcome"] == "created"
    assert submit["attributes"]["job.account"] == "default"
    # Nothing secret in any span of the run: no key, no prompt, no signed URL, no token.
    every = json.dumps([span["attributes"] for span in receiver.spans])
    assert API_KEY not in every and PROMPT not in every and PROMPT.split()[1] not in every
    assert "X-Amz-Signature" not in every and "Signature=" not in every and "?" not in every
    assert TOKEN not in every
    assert not re.search(r"[0-9]+-[0-9a-f]{32}", every)  # the upstream's signed file paths (expiry-signature)
    urls = [v for span in receiver.spans for k, v in span["attributes"].items() if k in ("http.url", "url.full")]
    assert any("{token}" in url for url in urls)  # a result download's path, its token replaced
