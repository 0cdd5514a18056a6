"""The batches API, for operators (admin principals): submit a JSONL body as a batch, list batches, read one's
progress and its manifest. Batches are the operator's (nightly work, bulk orders); a tenant's token gets 403."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from config.settings import PrincipalSettings
from core.errors import ValidationError
from producers.web.context import Caller, Web, WebDep
from producers.web.models import AUTH_ERRORS, Problem
from workers.batch.locations import LocationError
from workers.batch.reader import BatchSubmitter
from workers.batch.status import BatchStatus
from workers.batch.store import BatchBusy
from workers.storage.client import s3_errors
from workers.storage.errors import StorageError

router = APIRouter()
BatchId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
#: Where bodies submitted over HTTP are kept (by content), with their manifests beside them.
BODIES_PREFIX = "batches"


def _operator(caller: PrincipalSettings) -> None:
    if not caller.admin:
        raise HTTPException(403, "batches are an operator's: an admin principal's token is needed")


def _submitter(web: Web) -> BatchSubmitter:
    return web.batch_submitter


def batch_or_404(web: Web, batch_id: str) -> BatchStatus:
    """The batch, by id or a unique prefix of it (settled: its live states read now)."""
    batches = _submitter(web).batches
    found = batches.find(batch_id)
    if found is None:
        raise HTTPException(404, f"batch {batch_id} not found (or the prefix names several)")
    status = batches.settle(found)
    if status is None:
        raise HTTPException(404, f"batch {batch_id} not found")
    return status


@router.post(
    "/v1/batches",
    status_code=201,
    responses={
        200: {"description": "The same body was submitted before: nothing new was read"},
        403: {"model": Problem},
        **AUTH_ERRORS,
        413: {"model": Problem},
        409: {"model": Problem, "description": "The same body is being read by another request right now"},
        503: {"model": Problem, "description": "The bucket the body is kept in cannot be reached"},
    },
    summary="Submit a JSONL body (one job per line) as a batch; its bad lines are reported, never block it",
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "JSONL: one job per line (sent as text/plain or application/x-ndjson)",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def post_batch(
    request: Request,
    web: WebDep,
    caller: Caller,
    response: Response,
    name: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    priority: Annotated[str, Query(pattern="^(low|normal)$")] = "low",
    budget: Annotated[float | None, Query(gt=0, description="The most credits the batch's jobs may cost")] = None,
) -> Any:
    """The body is kept in the bucket by content (``batches/<sha256>.jsonl``, the manifest beside it), so
    the same body is the same batch: submitted again, it reads nothing and creates nothing."""
    _operator(caller)
    body = await request.body()
    return await run_in_threadpool(_submit, web, response, body, name, priority, budget)


def _submit(
    web: Web, response: Response, body: bytes, name: str | None, priority: str, budget: float | None
) -> dict[str, Any]:
    if not body.strip():
        raise _invalid(["body"], "must hold JSONL lines (one job per line)")
    submitter = _submitter(web)
    bucket = web.settings.s3.bucket
    key = f"{BODIES_PREFIX}/{hashlib.sha256(body).hexdigest()}.jsonl"
    try:
        with s3_errors("keeping the batch body"):
            submitter.files.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/x-ndjson")
        result = submitter.submit(f"s3://{bucket}/{key}", name=name, priority=priority, budget=budget)
    except ValidationError as error:
        raise _invalid(["query", error.field], error.message) from None
    except (StorageError, LocationError) as error:
        raise HTTPException(503, f"the bucket cannot be used now ({error}); try again") from None
    except BatchBusy:
        raise HTTPException(409, "the same batch is being read right now; look at it in a moment") from None
    response.status_code = 201 if result.read else 200
    out = result.status.to_dict()
    out["bad_lines"] = [{"line": b.line, "id": b.id, "error": b.error} for b in result.bad_lines]
    return out


def _invalid(loc: list[str], message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": tuple(loc), "msg": message, "type": "value_error"}])


@router.get("/v1/batches", responses={403: {"model": Problem}, **AUTH_ERRORS}, summary="The newest batches")
def list_batches(web: WebDep, caller: Caller, limit: Annotated[int, Query(ge=1, le=200)] = 20) -> Any:
    _operator(caller)
    return {"batches": [status.to_dict() for status in _submitter(web).batches.recent(limit)]}


@router.get(
    "/v1/batches/{batch_id}",
    responses={403: {"model": Problem}, 404: {"model": Problem}, **AUTH_ERRORS},
    summary="One batch (id or unique prefix): its lines, and its jobs by state",
)
def get_batch(web: WebDep, caller: Caller, batch_id: BatchId) -> Any:
    _operator(caller)
    return batch_or_404(web, batch_id).to_dict()


@router.get(
    "/v1/batches/{batch_id}/manifest",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            "description": "JSONL: a line per input line (line, id, job_id, state, s3_uri, error)",
        },
        403: {"model": Problem},
        404: {"model": Problem},
        409: {"model": Problem},
        **AUTH_ERRORS,
    },
    summary="A finished batch's manifest (JSONL: a line per input line, with its job's outcome)",
)
def get_manifest(web: WebDep, caller: Caller, batch_id: BatchId) -> Any:
    _operator(caller)
    status = batch_or_404(web, batch_id)
    if not status.done:
        raise HTTPException(409, f"batch {status.id} is {status.status}: {status.pending} job(s) still pending")
    lines = _submitter(web).batches.manifest_lines(status.id)
    return StreamingResponse(lines, media_type="application/x-ndjson")
