"""The workflows API: create a graph of jobs in one request, read it, cancel it (bearer token required)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from config.settings import PrincipalSettings
from core.errors import ValidationError
from core.workflows import Workflow, workflow_summary
from producers.web.context import Caller, Web, WebDep
from producers.web.models import AUTH_ERRORS, EnqueuedWorkflow, OverBudgetProblem, Problem, WorkflowView
from producers.web.uploads import read_jobs_body
from producers.workflows import cancel_workflow, prepare_workflow, write_workflow

router = APIRouter()
WorkflowId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def workflow_or_404(web: Web, caller: PrincipalSettings, workflow_id: str) -> Workflow:
    """The workflow, when it exists and the caller may see it (its own, or any for an admin); else 404."""
    workflow = web.producer.workflows.get(workflow_id)
    if workflow is None or (not caller.admin and workflow.owner != caller.name):
        raise HTTPException(404, f"workflow {workflow_id} not found")
    return workflow


@router.post(
    "/v1/workflows",
    status_code=201,
    response_model=EnqueuedWorkflow,
    responses={
        200: {"model": EnqueuedWorkflow, "description": "The idempotency key named an existing workflow"},
        **AUTH_ERRORS,
        413: {"model": Problem, "description": "Request body over the principal's limit"},
        402: {"model": OverBudgetProblem, "description": "A budget has no room for the estimated credits"},
        429: {"model": Problem, "description": "Over the principal's enqueue rate or live-job cap (Retry-After)"},
    },
    summary="Create a workflow: jobs whose parents may be other jobs of the same request",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["nodes"],
                        "properties": {
                            "nodes": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "required": ["name"],
                                    "properties": {
                                        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,40}$"},
                                        "model": {"type": "string"},
                                        "parent": {
                                            "type": "string",
                                            "description": "Another node's name, or an existing job's id",
                                        },
                                    },
                                    "additionalProperties": True,
                                },
                            },
                            "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 200},
                            "priority": {"type": "string", "enum": ["interactive", "batch"]},
                            "metadata": {"type": "object"},
                            "notify_url": {"type": "string"},
                        },
                        "additionalProperties": False,
                    }
                },
                "multipart/form-data": {"schema": {"type": "object"}},
            },
        }
    },
)
async def post_workflow(request: Request, web: WebDep, caller: Caller, response: Response) -> EnqueuedWorkflow:
    """Every node is checked first (nothing is written if one is bad: the error names ``nodes[i].field``);
    then every node's job is written at once. A node whose parent is another node waits (``waiting``) until
    that parent is stored, and then runs on the parent's account."""
    body, files = await read_jobs_body(request)
    return await run_in_threadpool(_create, web, caller, response, body, files)


def _create(web: Web, caller: PrincipalSettings, response: Response, body: Any, files: dict[str, bytes]) -> Any:
    try:
        prepared = prepare_workflow(web.producer, body, owner=caller.name, files=files)
    except ValidationError as error:
        loc: list[str | int] = ["body", *error.field.replace("[", ".").replace("]", "").split(".")]
        loc = [int(part) if isinstance(part, str) and part.isdigit() else part for part in loc]
        raise RequestValidationError([{"loc": tuple(loc), "msg": error.message, "type": "value_error"}]) from None
    if prepared.existing:
        response.status_code = 200
        workflow = prepared.workflow
    else:
        web.limits.check_request(caller, prepared.requests)
        with web.limits.admitted(caller, prepared.job_ids) as admission:
            workflow = write_workflow(web.producer, prepared)
            admission.use(prepared.job_ids)
    summary = workflow_summary(web.producer.workflows, web.jobs, workflow.id)
    return EnqueuedWorkflow(**summary, created=not prepared.existing)


@router.get(
    "/v1/workflows/{workflow_id}",
    response_model=WorkflowView,
    responses={404: {"model": Problem}, **AUTH_ERRORS},
    summary="One workflow: its state and each node's",
)
def get_workflow(web: WebDep, caller: Caller, workflow_id: WorkflowId) -> WorkflowView:
    workflow_or_404(web, caller, workflow_id)
    return WorkflowView(**workflow_summary(web.producer.workflows, web.jobs, workflow_id))


@router.post(
    "/v1/workflows/{workflow_id}/cancel",
    response_model=WorkflowView,
    responses={404: {"model": Problem}, **AUTH_ERRORS},
    summary="Cancel every node not yet submitted (the others run on)",
)
def cancel(web: WebDep, caller: Caller, workflow_id: WorkflowId) -> WorkflowView:
    workflow = workflow_or_404(web, caller, workflow_id)
    cancel_workflow(web.producer, workflow, by="through the HTTP API")
    return WorkflowView(**workflow_summary(web.producer.workflows, web.jobs, workflow_id))
