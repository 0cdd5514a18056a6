"""The shapes the HTTP API takes and returns (pydantic models, shown in the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.jobs import (
    ASPECT_RATIOS,
    KEY_MAX_CHARS,
    MODES,
    NOTIFY_URL_MAX_CHARS,
    NOTIFY_URL_PATTERN,
    PROMPT_MAX_CHARS,
    Job,
    JobState,
    Priority,
)

#: Most jobs in one ``POST /v1/jobs``.
MAX_JOBS_PER_REQUEST = 1000
#: A list's ``Idempotency-Key`` header gives item ``i`` the key ``{header}:{i}``, which must still fit.
HEADER_KEY_MAX_CHARS = KEY_MAX_CHARS - 5

#: "Holds a character that is not whitespace", with Python's ``str.isspace`` set spelled out, so that the
#: schema (ECMA regex), pydantic (Rust regex) and ``JobRequest`` (``str.strip``) agree on every string.
NOT_BLANK = r"[^\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"

#: ``state~score~id`` of the last entry a page looked at (score: ms the job entered the state).
_STATES_RE = "|".join(state.value for state in JobState)
CURSOR_PATTERN = rf"^({_STATES_RE})~-?[0-9]{{1,20}}(\.[0-9]{{1,12}})?~[A-Za-z0-9_-]{{0,64}}$"

AspectRatio = Literal["2:3", "3:2", "1:1"]
Mode = Literal["fun", "normal", "spicy"]
assert set(AspectRatio.__args__) == set(ASPECT_RATIOS) and set(Mode.__args__) == set(MODES)  # type: ignore[attr-defined]


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
    #: Where this job's end is POSTed, signed (Standard Webhooks), besides the principal's endpoints.
    notify_url: str | None = Field(
        default=None, min_length=8, max_length=NOTIFY_URL_MAX_CHARS, pattern=NOTIFY_URL_PATTERN
    )

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
    #: The principal that enqueued it (null for the Python API, the CLI and batch files).
    owner: str | None = None
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
    notify_url: str | None = None
    #: Webhook delivery attempts, oldest first (on ``GET /v1/jobs/{id}`` only).
    deliveries: list[dict[str, Any]] | None = None

    @classmethod
    def of(cls, job: Job) -> JobView:
        data = job.public_dict()
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
    #: With an ops token only: whether Redis answered.
    redis: bool | None = None
    #: With an ops token only: Celery workers that answered a ping (node names).
    workers: list[str] | None = None


AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "The body is not readable (e.g. not UTF-8)"},
    401: {"model": Problem, "description": "Missing or unknown bearer token"},
    413: {"model": Problem, "description": "Request body too large"},
    422: {"model": ValidationProblem, "description": "Invalid input; loc names the field"},
}
