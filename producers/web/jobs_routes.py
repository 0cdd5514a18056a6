"""The jobs API: enqueue, read, list and cancel (bearer token required)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from config.settings import PrincipalSettings
from core.errors import ValidationError
from core.jobs import (
    KEY_MAX_CHARS,
    Job,
    JobState,
    new_job_id,
)
from producers.rules import NotCancelable
from producers.web import listing
from producers.web.context import Caller, Web, WebDep
from producers.web.models import (
    AUTH_ERRORS,
    CURSOR_PATTERN,
    HEADER_KEY_MAX_CHARS,
    MAX_JOBS_PER_REQUEST,
    MULTIPART_SCHEMA,
    Conflict,
    EnqueuedJob,
    EnqueuedJobs,
    JobPage,
    JobView,
    OverBudgetProblem,
    Problem,
    jobs_body_schema,
)
from producers.web.principals import may_see
from producers.web.uploads import read_jobs_body
from workers.notify.store import delivery_log

router = APIRouter()
#: The shortest id prefix that names a job (as ``imagineq job``).
PREFIX_MIN = 8
JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def job_or_404(web: Web, caller: PrincipalSettings, job_id: str) -> Job:
    """The job, when it exists and the caller may see it; else 404 (someone else's job does not exist). A
    unique prefix of 8 characters or more names a job too, as on the command line."""
    job = web.jobs.get(job_id)
    if job is None and PREFIX_MIN <= len(job_id) < 32:
        # A tenant's prefix is looked for among its own jobs only (a scan bounded by its kept records).
        index = None if caller.admin else web.keys.owner_kept(caller.name)
        ids = web.jobs.ids_with_prefix(job_id, limit=2, index=index)
        visible = [found for found in web.jobs.get_many(ids) if found is not None and may_see(caller, found)]
        if len(visible) > 1:
            raise HTTPException(404, f"job prefix {job_id} names more than one job; give more of the id")
        job = visible[0] if visible else None
    if job is None or not may_see(caller, job):
        raise HTTPException(404, f"job {job_id} not found")
    return job


@router.post(
    "/v1/jobs",
    status_code=201,
    response_model=EnqueuedJob | EnqueuedJobs,
    responses={
        200: {"model": EnqueuedJob | EnqueuedJobs, "description": "Every job already existed (idempotency keys)"},
        **AUTH_ERRORS,
        413: {"model": Problem, "description": "Request body, or its metadata, over the principal's limit"},
        402: {"model": OverBudgetProblem, "description": "A budget has no room for the estimated credits"},
        429: {"model": Problem, "description": "Over the principal's enqueue rate or live-job cap (Retry-After)"},
    },
    summary="Enqueue one job, or a list of up to 1,000, of any model of the family",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": jobs_body_schema()},
                "multipart/form-data": {"schema": MULTIPART_SCHEMA},
            },
        }
    },
)
async def post_jobs(
    request: Request,
    web: WebDep,
    caller: Caller,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=HEADER_KEY_MAX_CHARS,
            description="For one job: its key (the field wins if both are given). For a list: "
            "item i gets `{key}:{i}` unless it has its own.",
        ),
    ] = None,
) -> EnqueuedJob | EnqueuedJobs:
    """Validate everything first, by each model's declaration (nothing is written if one item is bad),
    then write and publish. A multipart body carries the job (or list) as its ``job`` part and image
    files as other parts, which images name as ``{"upload": "<part name>"}``."""
    body, files = await read_jobs_body(request)
    return await run_in_threadpool(_enqueue, web, caller, response, body, files, idempotency_key)


def _enqueue(
    web: Web,
    caller: PrincipalSettings,
    response: Response,
    body: Any,
    files: dict[str, bytes],
    idempotency_key: str | None,
) -> EnqueuedJob | EnqueuedJobs:
    single = not isinstance(body, list)
    items = [body] if single else body
    if not single and not 1 <= len(items) <= MAX_JOBS_PER_REQUEST:
        raise _invalid(["body"], f"must be a list of 1 to {MAX_JOBS_PER_REQUEST} jobs (got {len(items)})")
    data: list[Any] = []
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("idempotency_key") is None and idempotency_key is not None:
            item = {**item, "idempotency_key": idempotency_key if single else f"{idempotency_key}:{index}"}
        data.append(item)
    try:
        requests = web.producer.prepare(data, owner=caller.name, files=files)
    except ValidationError as error:
        loc: list[str | int] = ["body"] if single else ["body", error.item or 0]
        raise _invalid([*loc, *_field_path(error.item_field)], error.message) from None
    web.limits.check_request(caller, requests)
    job_ids = [new_job_id() for _ in requests]
    with web.limits.admitted(caller, job_ids) as admission:
        enqueued = web.producer.enqueue_prepared(requests, job_ids=job_ids)
        admission.use(job.id for job, created in enqueued if created)
    views = [EnqueuedJob(**JobView.of(job).model_dump(), created=created) for job, created in enqueued]
    response.status_code = 201 if any(view.created for view in views) else 200
    return views[0] if single else EnqueuedJobs(jobs=views)


def _invalid(loc: list[str | int], message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": tuple(loc), "msg": message, "type": "value_error"}])


def _field_path(field: str) -> list[str | int]:
    """``images[1]`` → ``["images", 1]``; ``requests[0].prompt`` stays a dotted path of names."""
    path: list[str | int] = []
    for part in field.split("."):
        name, _, rest = part.partition("[")
        path.append(name)
        if rest.endswith("]") and rest[:-1].isdigit():
            path.append(int(rest[:-1]))
    return path


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobView,
    responses={404: {"model": Problem}, **AUTH_ERRORS},
    summary="One job",
)
def get_job(web: WebDep, caller: Caller, job_id: JobId) -> JobView:
    """The job (``job_id`` or a unique prefix of 8+ characters). A stored job's outputs each carry a
    short-lived ``url`` of ImagineQ's own copy (``video_url``: the first video's), for its owner only."""
    job = job_or_404(web, caller, job_id)
    view = JobView.of(job)
    view.deliveries = delivery_log(web.redis, web.keys, job.id)
    if job.state is JobState.STORED:
        view.outputs = [{**output, "url": web.presigned(str(output.get("uri", "")))} for output in view.outputs]
        videos = [o for o in view.outputs if str(o.get("content_type", "video/mp4")).startswith("video/")]
        view.video_url = videos[0]["url"] if videos else None
    return view


@router.get(
    "/v1/jobs",
    response_model=JobPage,
    responses=AUTH_ERRORS,
    summary="Jobs by state and/or batch, paged (oldest in a state first)",
)
def list_jobs(
    web: WebDep,
    caller: Caller,
    state: JobState | None = None,
    batch: Annotated[str | None, Query(min_length=1, max_length=KEY_MAX_CHARS)] = None,
    cursor: Annotated[str | None, Query(max_length=200, pattern=CURSOR_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JobPage:
    owner = None if caller.admin else caller.name
    return listing.list_jobs(web, state, batch, cursor, limit, owner=owner)


@router.delete(
    "/v1/jobs/{job_id}",
    response_model=JobView,
    responses={
        404: {"model": Problem},
        409: {"model": Conflict, "description": "The job is past queued"},
        **AUTH_ERRORS,
    },
    summary="Cancel a job that has not been submitted yet",
)
def cancel_job(web: WebDep, caller: Caller, job_id: JobId) -> Any:
    job_or_404(web, caller, job_id)
    try:
        return JobView.of(web.producer.cancel(job_id, by="through the HTTP API"))
    except NotCancelable as error:
        return JSONResponse({"detail": str(error), "state": error.job.state.value}, status_code=409)
