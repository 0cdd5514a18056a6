"""The ``web`` process: HTTP ingress for jobs, the upstream's callbacks, ``/metrics`` and ``/healthz``.

Served by ``uvicorn producers.http:app``; :func:`create_app` builds the app from a ``Settings`` (tests and
benchmarks start it as a real uvicorn process). Handlers that touch Redis are plain ``def``s, so FastAPI
runs them in its thread pool and the event loop never blocks.

- ``/v1/jobs*`` needs ``Authorization: Bearer <token>`` (``ingress_tokens``, compared in constant time);
  the callbacks path has its own per-job secret instead, ``/healthz``, ``/metrics`` and ``/openapi.json``
  are open (meant for probes and scrapers inside the deployment).
- Every request body is capped at ``ingress_max_body_bytes`` (413), whether or not it says its length.
- Validation errors are 422 in FastAPI's shape, ``loc`` naming the field (``["body", 3, "prompt"]``); a
  list is checked whole before anything is written.
- Listing (``GET /v1/jobs``) pages through the state index sorted sets (``<prefix>:state:<state>``, scored
  by the time the job entered the state), oldest first, states in ``JobState`` order when none is given.
  The cursor ``state~score~id`` is the position of the last entry looked at; any string of that shape
  is a valid position (ordered by state in ``JobState`` order, then score, then id). It is a live view:
  a job that changes state between pages can be missed or seen twice. ``batch`` filters the entries read,
  so a page may hold fewer than ``limit`` jobs while ``next_cursor`` is still set (at most
  :data:`SCAN_BUDGET_FACTOR` × ``limit`` entries are read per page).
- ``/healthz``: Redis ``PING`` decides the status code (503 when it fails); workers are "seen" when they
  answer a Celery ``control.ping`` (0.5 s timeout, result cached ``health_workers_cache_s``) — no worker
  makes the status ``degraded`` but stays 200, because the web itself can still take jobs.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Annotated, Any, Literal, cast

import redis
from celery import Celery
from fastapi import Body, Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match

from config.celery import (
    PRIORITY_BATCH,
    PRIORITY_INTERACTIVE,
    QUEUES,
    STORE_QUEUE,
    TASK_STORE,
)
from config.settings import Settings, get_settings
from producers.api import Producer
from producers.callbacks import CallbackReceiver
from producers.metrics import RedisCollector, build_registry
from workers.clients import Clients
from workers.errors import ValidationError
from workers.jobs import (
    ASPECT_RATIOS,
    KEY_MAX_CHARS,
    MODES,
    PROMPT_MAX_CHARS,
    Job,
    JobRequest,
    JobState,
    Priority,
)
from workers.logs import UVICORN_LOGGERS, configure_logging
from workers.quota import QuotaLimiter

log = logging.getLogger("imagineq.http")

#: Most jobs in one ``POST /v1/jobs``.
MAX_JOBS_PER_REQUEST = 1000
#: A page reads at most this many index entries per ``limit`` (matters only with ``batch``).
SCAN_BUDGET_FACTOR = 10
#: A list's ``Idempotency-Key`` header gives item ``i`` the key ``{header}:{i}``, which must still fit.
HEADER_KEY_MAX_CHARS = KEY_MAX_CHARS - 5
PING_TIMEOUT_S = 0.5

#: "Holds a character that is not whitespace", with Python's ``str.isspace`` set spelled out, so that the
#: schema (ECMA regex), pydantic (Rust regex) and ``JobRequest`` (``str.strip``) agree on every string.
NOT_BLANK = r"[^\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"

#: ``state~score~id`` of the last entry a page looked at (score: ms the job entered the state).
_STATES_RE = "|".join(state.value for state in JobState)
CURSOR_PATTERN = rf"^({_STATES_RE})~-?[0-9]{{1,20}}(\.[0-9]{{1,12}})?~[A-Za-z0-9_-]{{0,64}}$"

AspectRatio = Literal["2:3", "3:2", "1:1"]
Mode = Literal["fun", "normal", "spicy"]
assert set(AspectRatio.__args__) == set(ASPECT_RATIOS) and set(Mode.__args__) == set(MODES)  # type: ignore[attr-defined]


# -- models ---------------------------------------------------------------------------------------------


class JobIn(BaseModel):
    """One text-to-video request."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=PROMPT_MAX_CHARS, pattern=NOT_BLANK)
    aspect_ratio: AspectRatio = "2:3"
    mode: Mode = "normal"
    #: Free-form JSON kept on the record and in the S3 sidecar (≤ 16 KB as JSON).
    metadata: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = Priority.INTERACTIVE
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=KEY_MAX_CHARS)
    batch_id: str | None = Field(default=None, min_length=1, max_length=KEY_MAX_CHARS)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


JobsIn = JobIn | Annotated[list[JobIn], Field(min_length=1, max_length=MAX_JOBS_PER_REQUEST)]


class JobView(BaseModel):
    """A job's record (secrets and internal bookkeeping left out)."""

    id: str
    state: JobState
    prompt: str
    aspect_ratio: str
    mode: str
    metadata: dict[str, Any]
    priority: Priority
    idempotency_key: str | None = None
    batch_id: str | None = None
    account: str | None = None
    task_id: str | None = None
    attempts: int = 0
    reason: str | None = None
    error: str | None = None
    fail_code: str | None = None
    fail_msg: str | None = None
    result_url: str | None = None
    s3_uri: str | None = None
    size: int | None = None
    sha256: str | None = None
    created_at: float
    updated_at: float
    #: State → when the job last entered it (seconds since the epoch, Redis clock).
    timestamps: dict[str, float]

    @classmethod
    def of(cls, job: Job) -> JobView:
        data = job.to_dict()
        data.pop("extra", None)
        return cls.model_validate({name: data[name] for name in cls.model_fields if name in data})


class EnqueuedJob(JobView):
    #: False when the idempotency key named an existing job (nothing new was written).
    created: bool


class EnqueuedJobs(BaseModel):
    jobs: list[EnqueuedJob]


class JobPage(BaseModel):
    jobs: list[JobView]
    #: Pass as ``cursor`` for the next page; null when there is none.
    next_cursor: str | None


class Problem(BaseModel):
    detail: str


class Conflict(BaseModel):
    detail: str
    state: JobState


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationProblem(BaseModel):
    detail: list[ValidationIssue]


class CallbackReply(BaseModel):
    code: int
    msg: str


class Health(BaseModel):
    status: Literal["ok", "degraded", "down"]
    redis: bool
    #: Celery workers that answered a ping (node names).
    workers: list[str]


_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not readable (e.g. not UTF-8)"},
    401: {"model": Problem, "description": "Missing or unknown bearer token"},
    413: {"model": Problem, "description": "Request body too large"},
    422: {"model": ValidationProblem, "description": "Invalid input; loc names the field"},
}


# -- request body limit ---------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """413 for bodies over ``max_bytes``: up front from Content-Length, else while the body streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": self._message}, status_code=413)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises an HTTPException met while reading the body.
                    raise HTTPException(status_code=413, detail=self._message)
            return message

        await self.app(scope, limited, send)

    @property
    def _message(self) -> str:
        return f"request body larger than {self.max_bytes} bytes"


# -- the app --------------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="One of the configured ingress tokens")
JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def authorized(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Bearer-token check for ``/v1/jobs*``."""
    web: Web = request.app.state.web
    if credentials is None or not web.token_ok(credentials.credentials):
        raise HTTPException(401, "missing or unknown bearer token", {"WWW-Authenticate": "Bearer"})



class Web:
    """Everything the handlers use, built once per app from Settings."""

    def __init__(self, settings: Settings) -> None:
        from workers.celery import create_app as create_celery

        self.settings = settings
        clients = Clients.build(settings)
        self.redis, self.keys, self.jobs = clients.redis, clients.keys, clients.jobs
        self.quota = QuotaLimiter.for_settings(self.redis, self.keys, settings)
        self.celery: Celery = create_celery(settings)
        self.producer = Producer(settings, client=self.redis, app=self.celery)
        hmac_key = settings.callbacks.hmac_key
        self.callbacks = CallbackReceiver(
            self.redis, self.keys, self.jobs, self.quota, self.enqueue_store,
            hmac_key=hmac_key.get_secret_value().encode() if hmac_key is not None else None,
            max_age_s=settings.callbacks.max_age_s,
            early_ttl_s=settings.early_callback_ttl_s,
        )  # fmt: skip
        self.registry = build_registry(
            RedisCollector(self.redis, self.keys, self.jobs, self.quota, QUEUES)
        )
        self._tokens = [token.get_secret_value().encode() for token in settings.ingress_tokens]
        self._workers: tuple[float, list[str]] = (-1e9, [])
        self._workers_lock = threading.Lock()

    def token_ok(self, given: str) -> bool:
        """Constant time per configured token, and every token is compared."""
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(given.encode(), token)
        return ok

    def enqueue_store(self, job: Job) -> None:
        level = PRIORITY_BATCH if job.priority is Priority.BATCH else PRIORITY_INTERACTIVE
        self.celery.send_task(TASK_STORE, args=(job.id,), queue=STORE_QUEUE, priority=level)

    def workers_seen(self) -> list[str]:
        with self._workers_lock:
            at, names = self._workers
            if time.monotonic() - at < self.settings.health_workers_cache_s:
                return names
            try:
                replies = self.celery.control.ping(timeout=PING_TIMEOUT_S) or []
            except Exception as error:  # the broker is unreachable: report no workers, keep serving
                log.warning("healthz: worker ping failed: %s", error)
                replies = []
            names = sorted(name for reply in replies for name in reply)
            self._workers = (time.monotonic(), names)
            return names

    def close(self) -> None:
        self.redis.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    web = Web(settings)
    if not settings.ingress_tokens:
        log.warning("no ingress_tokens configured: every /v1/jobs request will be refused (401)")
    app = FastAPI(
        title="ImagineQ",
        version="0.1.0",
        summary="Text prompts to stored Grok Imagine videos",
        responses={413: {"model": Problem, "description": "Request body too large"}},
    )
    app.state.web = web
    app.add_middleware(BodyLimit, max_bytes=settings.ingress_max_body_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(405, _method_not_allowed)  # type: ignore[arg-type]
    def job_or_404(job_id: str) -> Job:
        job = web.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"job {job_id} not found")
        return job

    @app.post(
        "/v1/jobs",
        status_code=201,
        response_model=EnqueuedJob | EnqueuedJobs,
        dependencies=[Depends(authorized)],
        responses={200: {"model": EnqueuedJob | EnqueuedJobs,
                         "description": "Every job already existed (idempotency keys)"}, **_AUTH_ERRORS},
        summary="Enqueue one job, or a list of up to 1,000",
    )  # fmt: skip
    def post_jobs(
        response: Response,
        body: Annotated[JobsIn, Body()],
        idempotency_key: Annotated[
            str | None,
            Header(alias="Idempotency-Key", min_length=1, max_length=HEADER_KEY_MAX_CHARS,
                   description="For one job: its key (the field wins if both are given). For a list: "
                   "item i gets `{key}:{i}` unless it has its own."),
        ] = None,
    ) -> EnqueuedJob | EnqueuedJobs:  # fmt: skip
        """Validate everything first (nothing is written if one item is bad), then write and publish."""
        single = isinstance(body, JobIn)
        items = [body] if isinstance(body, JobIn) else body
        requests: list[JobRequest] = []
        for index, item in enumerate(items):
            data = item.model_dump()
            if data["idempotency_key"] is None and idempotency_key is not None:
                data["idempotency_key"] = idempotency_key if single else f"{idempotency_key}:{index}"
            try:
                requests.append(JobRequest.from_mapping(data))
            except ValidationError as error:
                loc: list[str | int] = ["body"] if single else ["body", index]
                raise RequestValidationError(
                    [{"loc": (*loc, *error.field.split(".")), "msg": error.message, "type": "value_error"}]
                ) from None
        enqueued = web.producer.enqueue_many_created(requests)
        views = [EnqueuedJob(**JobView.of(job).model_dump(), created=created) for job, created in enqueued]
        response.status_code = 201 if any(view.created for view in views) else 200
        return views[0] if single else EnqueuedJobs(jobs=views)

    @app.get(
        "/v1/jobs/{job_id}",
        response_model=JobView,
        dependencies=[Depends(authorized)],
        responses={404: {"model": Problem}, **_AUTH_ERRORS},
        summary="One job",
    )
    def get_job(job_id: JobId) -> JobView:
        return JobView.of(job_or_404(job_id))

    @app.get(
        "/v1/jobs",
        response_model=JobPage,
        dependencies=[Depends(authorized)],
        responses=_AUTH_ERRORS,
        summary="Jobs by state and/or batch, paged (oldest in a state first)",
    )
    def list_jobs(
        state: JobState | None = None,
        batch: Annotated[str | None, Query(min_length=1, max_length=KEY_MAX_CHARS)] = None,
        cursor: Annotated[str | None, Query(max_length=200, pattern=CURSOR_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> JobPage:
        return _list_jobs(web, state, batch, cursor, limit)

    @app.delete(
        "/v1/jobs/{job_id}",
        response_model=JobView,
        dependencies=[Depends(authorized)],
        responses={404: {"model": Problem},
                   409: {"model": Conflict, "description": "The job is past queued"}, **_AUTH_ERRORS},
        summary="Cancel a job that has not been submitted yet",
    )  # fmt: skip
    def cancel_job(job_id: JobId) -> Any:
        job = job_or_404(job_id)
        if job.state is JobState.QUEUED and web.jobs.transition(
            job_id, JobState.CANCELED, expect=JobState.QUEUED,
            fields={"reason": "canceled", "error": "canceled through the HTTP API"},
        ):  # fmt: skip
            return JobView.of(job_or_404(job_id))
        job = job_or_404(job_id)
        if job.state is JobState.CANCELED:
            return JobView.of(job)
        what = "has reached the upstream" if job.state is not JobState.SUBMITTING else "is being submitted"
        return JSONResponse(
            {"detail": f"job {job_id} is {job.state.value}: it {what} and can no longer be canceled"
             if not job.state.terminal else f"job {job_id} is already {job.state.value}",
             "state": job.state.value},
            status_code=409,
        )  # fmt: skip

    @app.post(
        "/v1/callbacks/{job_id}/{token}",
        response_model=CallbackReply,
        responses={
            400: {"model": CallbackReply, "description": "Not a callback body"},
            401: {"model": CallbackReply, "description": "Bad HMAC signature or timestamp"},
            403: {"model": CallbackReply, "description": "Wrong per-job secret"},
            404: {"model": CallbackReply, "description": "Unknown job"},
        },
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"code": {"type": "integer"}, "msg": {"type": "string"},
                                             "data": {"type": "object"}}}}}}},
        summary="Upstream task callback (the job's callBackUrl)",
    )  # fmt: skip
    async def callback(
        request: Request,
        job_id: Annotated[str, Path(max_length=200)],
        token: Annotated[str, Path(max_length=200)],
    ) -> JSONResponse:
        body = await request.body()
        received = await run_in_threadpool(web.callbacks.receive, job_id, token, body, request.headers)
        return JSONResponse({"code": received.outcome.status, "msg": received.message},
                            status_code=received.outcome.status)  # fmt: skip

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}}, summary="Liveness")
    def healthz() -> Any:
        try:
            redis_ok = bool(web.redis.ping())
        except redis.RedisError:
            redis_ok = False
        if not redis_ok:
            return JSONResponse({"status": "down", "redis": False, "workers": []}, status_code=503)
        workers = web.workers_seen()
        return Health(status="ok" if workers else "degraded", redis=True, workers=workers)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                         "description": "Prometheus text format"}},
        summary="Prometheus metrics, read from Redis at scrape time",
    )  # fmt: skip
    def metrics() -> Response:
        return Response(generate_latest(web.registry), media_type=CONTENT_TYPE_LATEST)

    app.router.add_event_handler("shutdown", web.close)
    return app


async def _method_not_allowed(request: Request, exc: HTTPException) -> JSONResponse:
    """405 with ``Allow`` listing the methods of *every* route on the path (Starlette names only one)."""
    allowed: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, APIRoute) and route.matches(request.scope)[0] is not Match.NONE:
            allowed |= route.methods or set()
    return JSONResponse(
        {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(sorted(allowed))}
    )


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 shape, minus pydantic's union branch tags: the loc names the field as sent."""
    body = exc.body
    branch = "list[JobIn]" if isinstance(body, list) else "JobIn"
    issues = []
    for error in exc.errors():
        loc = list(error.get("loc", ()))
        if len(loc) > 1 and loc[0] == "body" and loc[1] in ("JobIn", "list[JobIn]"):
            if loc[1] != branch:
                continue
            loc = [loc[0], *loc[2:]]
        issues.append({"loc": loc, "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))})
    return JSONResponse({"detail": jsonable_encoder(issues)}, status_code=422)


# -- listing --------------------------------------------------------------------------------------------


def _encode_cursor(state: JobState, score: float, job_id: str) -> str:
    text = repr(score)
    if "e" in text or "n" in text:  # never for scores in ms since the epoch; keep the pattern true anyway
        text = f"{score:.6f}"
    return f"{state.value}~{text}~{job_id}"


def _decode_cursor(cursor: str) -> tuple[JobState, float, str]:
    """A cursor is a position (state, score, id): every string matching CURSOR_PATTERN is one."""
    state, score, job_id = cursor.split("~")
    return JobState(state), float(score), job_id


def _list_jobs(
    web: Web, state: JobState | None, batch: str | None, cursor: str | None, limit: int
) -> JobPage:
    """See the module docstring: state indexes in order, entries after the cursor, ``batch`` filtered."""
    order = list(JobState)
    states = [state] if state is not None else order
    after: tuple[float, str] | None = None
    if cursor is not None:
        # Positions are ordered by (state in JobState order, score, id); a cursor past the selected
        # states gives an empty page, one before them the first page.
        at_state, score, last_id = _decode_cursor(cursor)
        states = [s for s in states if order.index(s) >= order.index(at_state)]
        if states and states[0] is at_state:
            after = (score, last_id)
    budget = limit * SCAN_BUDGET_FACTOR if batch is not None else limit
    found: list[JobView] = []
    last: tuple[JobState, float, str] | None = None
    chunk = min(max(limit + 1, 50), 1000)
    for current in states:
        for rows in _index_after(web, current, after, chunk):
            for (member, score), job in zip(rows, web.jobs.get_many([m for m, _ in rows]), strict=True):
                if len(found) == limit or budget == 0:
                    # There is at least this one more entry: the page ends here.
                    assert last is not None
                    return JobPage(jobs=found, next_cursor=_encode_cursor(*last))
                budget -= 1
                last = (current, score, member)
                if job is not None and (batch is None or job.batch_id == batch):
                    found.append(JobView.of(job))
        after = None
    return JobPage(jobs=found, next_cursor=None)


def _index_after(
    web: Web, state: JobState, after: tuple[float, str] | None, chunk: int
) -> Iterator[list[tuple[str, float]]]:
    """The state index's entries (id, score) in order, those after ``after`` only, ``chunk`` at a time."""
    index = web.keys.state_index(state.value)
    low = "-inf" if after is None else repr(after[0])
    offset = 0
    while True:
        rows = cast(
            "list[tuple[str, float]]",
            web.redis.zrangebyscore(index, low, "+inf", start=offset, num=chunk, withscores=True),
        )
        if not rows:
            return
        offset += len(rows)
        if after is not None:
            rows = [(member, score) for member, score in rows if (score, member) > after]
        if rows:
            yield rows


# [issue 7] uvicorn imports this module after configuring its own loggers: from here on they (the access
# log included) write through workers.logs — text or JSON, secrets and callback tokens redacted.
configure_logging(get_settings(), service="web", level="INFO", take_over=UVICORN_LOGGERS)
app = create_app()
