"""Traces: one per job, from its enqueue through submit, each poll or callback, store and webhook delivery,
across every process (OpenTelemetry, exported over OTLP/HTTP).

Off by default; the standard variables switch it on: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, ``OTEL_SDK_DISABLED`` not ``true``, ``OTEL_TRACES_EXPORTER`` unset or
``otlp``; ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` name the process (default ``imagineq-<role>``),
``OTEL_EXPORTER_OTLP_HEADERS`` and the other exporter variables are read by the exporter itself.

A job's trace is not carried by broker messages: a submit message is a ticket for whichever job is next, not
for one job. It is carried by the job's record instead: enqueueing starts the job's root span
(``imagineq.enqueue``, linked to the request that enqueued it) and keeps its W3C ``traceparent`` in the record
(``trace``); every later step starts its span under it (:func:`job_span`), in whichever process it runs. The
``requests`` and ``botocore`` instrumentations add a span per upstream call, result download, file upload, S3
upload and webhook POST under the step's span; the web's own requests get FastAPI's server spans.

What is never recorded: a secret (API keys and tokens travel in headers, which are not captured), a prompt
or a job's input, a signed URL (every URL is recorded without its query string, and path segments that look
like tokens are replaced: callback tokens, the upstream's signed file paths).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

#: The field of a job's record that keeps its trace context.
TRACE_FIELD: Final = "trace"
#: Span attribute names (job.id, job.model, ...), one vocabulary for every process.
_PROPAGATOR: Final = TraceContextTextMapPropagator()
#: A path segment that looks like a token (long, of token characters) unless it is a 32-hex id.
_TOKENISH = re.compile(r"^[A-Za-z0-9_.~-]{24,}$")
_HEX_ID = re.compile(r"^[0-9a-f]{32}$")
_URL_ATTRIBUTES: Final = ("http.url", "url.full", "http.target", "url.path")

_enabled = False


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the standard OTEL_* variables ask for traces."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() not in ("otlp", ""):
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def enabled() -> bool:
    return _enabled


def setup(role: str) -> bool:
    """Trace this process (``role``: web, submit, poll, store, notify, producer, ...) when the variables ask
    for it; once per process (a forked worker child sets up its own). True when traces are on."""
    global _enabled
    if _enabled or not wanted():
        return _enabled
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.botocore import BotocoreInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    name = os.environ.get("OTEL_SERVICE_NAME") or f"imagineq-{role}"
    provider = TracerProvider(resource=Resource.create({"service.name": name, "service.namespace": "imagineq"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    RequestsInstrumentor().instrument(request_hook=_request_hook)
    BotocoreInstrumentor().instrument()  # type: ignore[no-untyped-call]
    _enabled = True
    return True


def flush(timeout_ms: int = 5000) -> None:
    """Send the spans this process still holds (before it exits)."""
    provider = trace.get_tracer_provider()
    force = getattr(provider, "force_flush", None)
    if _enabled and force is not None:
        force(timeout_ms)


def safe_url(url: str) -> str:
    """``url`` as a span may keep it: no user info, query or fragment, token-like path segments replaced."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, safe_path(parts.path), "", ""))


def safe_path(path: str) -> str:
    """A URL's path without its query, token-like segments replaced."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    return "/".join("{token}" if _TOKENISH.match(s) and not _HEX_ID.match(s) else s for s in path.split("/"))


def redact(span: Span) -> None:
    """Replace the URL attributes an instrumentation set on ``span`` with their safe forms."""
    attributes = getattr(span, "attributes", None) or {}
    for name in _URL_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str):
            span.set_attribute(name, safe_url(value) if "://" in value else safe_path(value))


def _request_hook(span: Span, request: Any) -> None:
    if span.is_recording():
        redact(span)


def server_request_hook(span: Span, scope: Mapping[str, Any]) -> None:
    """FastAPI's server spans: the same redaction (a callback's path holds its token)."""
    if span.is_recording():
        redact(span)


def job_attributes(job: Any, **extra: Any) -> dict[str, Any]:
    """A job's span attributes: its id, model, account and state (never its prompt or input)."""
    attributes: dict[str, Any] = {"job.id": job.id, "job.model": job.model, "job.state": job.state.value}
    if job.account:
        attributes["job.account"] = job.account
    if job.owner:
        attributes["job.principal"] = job.owner
    attributes.update({f"job.{name}": value for name, value in extra.items() if value is not None})
    return attributes


def new_job_trace(job: Any) -> str | None:
    """Start (and end) a new job's root span, linked to the span enqueueing it (an HTTP request, a batch);
    its ``traceparent`` for the job's record. None when traces are off."""
    if not _enabled:
        return None
    current = trace.get_current_span().get_span_context()
    links = [Link(current)] if current.is_valid else []
    tracer = trace.get_tracer("imagineq")
    span = tracer.start_span("imagineq.enqueue", context=trace.set_span_in_context(trace.INVALID_SPAN), links=links)
    span.set_attributes(job_attributes(job))
    span.end()
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


def _job_context(job: Any) -> Context:
    """The context a step of ``job`` starts its span in: under the trace its record keeps, else a new one."""
    traceparent = job.extra.get(TRACE_FIELD)
    return _PROPAGATOR.extract({"traceparent": traceparent} if traceparent else {})


@contextmanager
def job_span(name: str, job: Any, **attributes: Any) -> Iterator[Span | None]:
    """A span of one step of ``job`` under its trace (the record's ``trace``; a job enqueued while traces were
    off starts a trace of its own), current while the block runs; ``job.outcome`` may be set on it. A
    no-op when traces are off."""
    if not _enabled:
        yield None
        return
    tracer = trace.get_tracer("imagineq")
    with tracer.start_as_current_span(
        name, context=_job_context(job), attributes=job_attributes(job, **attributes), record_exception=False
    ) as span:
        try:
            yield span
        except BaseException as error:
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            raise


def past_span(name: str, job: Any, started_at: float, ended_at: float | None = None, **attributes: Any) -> None:
    """A span of ``job`` that already happened (a wait measured from the record's timestamps)."""
    if not _enabled:
        return
    tracer = trace.get_tracer("imagineq")
    span = tracer.start_span(
        name,
        context=_job_context(job),
        attributes=job_attributes(job, **attributes),
        start_time=int(started_at * 1e9),
    )
    span.end(end_time=int((ended_at if ended_at is not None else time.time()) * 1e9))


def set_outcome(span: Span | None, outcome: str) -> None:
    if span is not None:
        span.set_attribute("job.outcome", outcome)
