"""The shapes the HTTP API takes and returns (pydantic models, shown in the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from core.catalog import DEFAULT_MODEL, FAMILY, ModelSpec
from core.jobs import (
    KEY_MAX_CHARS,
    NOTIFY_URL_MAX_CHARS,
    NOTIFY_URL_PATTERN,
    Job,
    JobState,
    Priority,
)

#: Most jobs in one ``POST /v1/jobs``.
MAX_JOBS_PER_REQUEST = 1000
#: A list's ``Idempotency-Key`` header gives item ``i`` the key ``{header}:{i}``, which must still fit.
HEADER_KEY_MAX_CHARS = KEY_MAX_CHARS - 5


#: ``state~score~id`` of the last entry a page looked at (score: ms the job entered the state).
_STATES_RE = "|".join(state.value for state in JobState)
CURSOR_PATTERN = rf"^({_STATES_RE})~-?[0-9]{{1,20}}(\.[0-9]{{1,12}})?~[A-Za-z0-9_-]{{0,64}}$"


def job_schema(spec: ModelSpec) -> dict[str, Any]:
    """The JSON schema of one job of ``spec`` (shown in the OpenAPI document; the model's declaration
    checks the body itself, so the schema and the checks cannot drift apart)."""
    properties: dict[str, Any] = {
        "model": {
            "type": "string",
            "enum": [spec.short, spec.name],
            "description": "The model (default text-to-video)" if spec.short == DEFAULT_MODEL else "The model",
        },
        **{field.name: field.schema() for field in spec.fields},
        **JOB_FIELD_SCHEMAS,
    }
    required = [field.name for field in spec.fields if field.required]
    if spec.short != DEFAULT_MODEL:
        required.insert(0, "model")
    # null for an optional field means its default
    properties = {name: schema if name in required else _nullable(schema) for name, schema in properties.items()}
    return {
        "title": f"{spec.title} job",
        "type": "object",
        "description": f"{spec.title} ({spec.name}): {spec.output} output"
        + (f", up to {spec.max_outputs}" if spec.max_outputs > 1 else ""),
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "oneOf" in schema:
        return {**schema, "oneOf": [*schema["oneOf"], {"type": "null"}]}
    out = dict(schema)
    if isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if "enum" in out:
        out["enum"] = [*out["enum"], None]
    return out


#: The job's own fields, the same for every model.
JOB_FIELD_SCHEMAS: dict[str, Any] = {
    "metadata": {"type": "object", "description": "Free-form JSON kept on the record and in the S3 sidecar"},
    "priority": {"type": "string", "enum": [p.value for p in Priority], "default": Priority.INTERACTIVE.value},
    "idempotency_key": {"type": "string", "minLength": 1, "maxLength": KEY_MAX_CHARS},
    "batch_id": {"type": "string", "minLength": 1, "maxLength": KEY_MAX_CHARS},
    "notify_url": {
        "type": "string",
        "minLength": 8,
        "maxLength": NOTIFY_URL_MAX_CHARS,
        "pattern": NOTIFY_URL_PATTERN,
        "description": "Where this job's end is POSTed, signed (Standard Webhooks), besides the principal's endpoints",
    },
}


#: ``POST /v1/jobs`` as multipart: the job (or list) as JSON in ``job``, image files in other parts.
MULTIPART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "job": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": 'The job (or list) as JSON; an image names a file part as {"upload": "<part name>"}',
        }
    },
    "required": ["job"],
    "additionalProperties": {"type": "string", "format": "binary"},
}


def jobs_body_schema() -> dict[str, Any]:
    """``POST /v1/jobs``: one job of any model, or a list of up to 1,000."""
    one = {"oneOf": [job_schema(spec) for spec in FAMILY]}
    return {
        "anyOf": [one, {"type": "array", "items": one, "minItems": 1, "maxItems": MAX_JOBS_PER_REQUEST}],
    }


class JobView(BaseModel):
    """A job's record (secrets and internal bookkeeping left out)."""

    id: str
    state: JobState
    #: The model's short name (text-to-video, image-to-video, text-to-image, ...).
    model: str
    prompt: str
    #: The model's other fields, as checked (with their defaults).
    input: dict[str, Any]
    #: Kept for the clients of text-to-video: ``input``'s, when the model has them.
    aspect_ratio: str | None = None
    mode: str | None = None
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
    #: Every result URL of the task (valid 24 h upstream).
    result_urls: list[str] = Field(default_factory=list)
    #: The first output's object (``outputs`` has them all).
    s3_uri: str | None = None
    size: int | None = None
    sha256: str | None = None
    #: Each stored output: index, uri, content_type, size, sha256 (and, on ``GET /v1/jobs/{id}`` of a stored
    #: job, ``url``: a short-lived link to ImagineQ's copy).
    outputs: list[dict[str, Any]] = Field(default_factory=list)
    #: On ``GET /v1/jobs/{id}`` of a stored job: a short-lived link to its (first) video in ImagineQ's S3,
    #: which outlives the upstream's ``result_url`` (dead after 24 h).
    video_url: str | None = None
    created_at: float
    updated_at: float
    #: State → when the job last entered it (seconds since the epoch, Redis clock).
    timestamps: dict[str, float]
    notify_url: str | None = None
    #: Earlier attempts, oldest first (a resubmit keeps the failed one): reason, error, task, timestamps.
    history: list[dict[str, Any]] = Field(default_factory=list)
    #: A failed job a new attempt may fix (not a refusal that would come again, such as moderation).
    resubmittable: bool = False
    #: The workflow the job is a node of, and the node's name there.
    workflow_id: str | None = None
    node: str | None = None
    #: Credits the job is estimated to cost (its model's price rule), reserved at enqueue.
    estimate: float | None = None
    #: Credits charged once its upstream task existed (the upstream's own figure when it gave one).
    charged: float | None = None
    #: Where its credits are: null (reserved), ``charged``, ``settled`` (on the upstream's figure) or ``released``.
    credits: str | None = None
    #: Webhook delivery attempts, oldest first (on ``GET /v1/jobs/{id}`` only).
    deliveries: list[dict[str, Any]] | None = None

    @classmethod
    def of(cls, job: Job) -> JobView:
        data = job.public_dict()
        data["aspect_ratio"], data["mode"] = job.aspect_ratio, job.mode
        data["resubmittable"] = job.resubmittable
        return cls.model_validate({name: data[name] for name in cls.model_fields if name in data})


class EnqueuedJob(JobView):
    #: False when the idempotency key named an existing job (nothing new was written).
    created: bool


class EnqueuedJobs(BaseModel):
    jobs: list[EnqueuedJob]


class WorkflowNodeView(BaseModel):
    name: str
    job_id: str
    #: The parent node's name (null: no parent in the workflow).
    parent: str | None = None
    model: str | None = None
    #: The node's job state (``waiting`` while its parent has not been stored); null when its record expired.
    state: str | None = None
    reason: str | None = None
    #: How many outputs it stored.
    outputs: int = 0


class WorkflowView(BaseModel):
    id: str
    #: ``running`` while a node has not ended, then ``completed``, ``partly_failed`` or ``failed``.
    state: str | None
    created_at: float | None = None
    completed_at: float | None = None
    canceled: bool = False
    nodes: list[WorkflowNodeView]


class EnqueuedWorkflow(WorkflowView):
    #: False when the idempotency key named an existing workflow (nothing new was written).
    created: bool


class JobPage(BaseModel):
    jobs: list[JobView]
    #: Pass as ``cursor`` for the next page; null when there is none.
    next_cursor: str | None


class OverBudgetProblem(BaseModel):
    """402: a budget has no room for the request's estimated credits; nothing was written or spent."""

    error: str = "over_budget"
    #: ``principal_day``, ``principal_month``, ``batch`` or ``global_day``.
    budget: str
    #: The budget's limit, what it has charged and reserved, and what the refused request needed (credits).
    limit: float
    charged: float
    reserved: float
    estimate: float
    detail: str


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
