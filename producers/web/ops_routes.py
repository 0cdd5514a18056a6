"""The upstream's callbacks and the operational endpoints: ``/livez``, ``/healthz`` and ``/metrics``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from producers.web.context import Operator, WebDep
from producers.web.models import CallbackReply, Health, Problem

router = APIRouter()


@router.post(
    "/v1/callbacks/{job_id}/{token}",
    response_model=CallbackReply,
    responses={
        400: {"model": CallbackReply, "description": "Not a callback body"},
        401: {"model": CallbackReply, "description": "Bad HMAC signature or timestamp"},
        403: {"model": CallbackReply, "description": "Wrong per-job secret"},
        404: {"model": CallbackReply, "description": "Unknown job"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "code": {"type": "integer"},
                            "msg": {"type": "string"},
                            "data": {"type": "object"},
                        },
                    }
                }
            },
        }
    },
    summary="Upstream task callback (the job's callBackUrl)",
)
async def callback(
    web: WebDep,
    request: Request,
    job_id: Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")],
    token: Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+$")],
) -> JSONResponse:
    body = await request.body()
    received = await run_in_threadpool(web.callbacks.receive, job_id, token, body, request.headers)
    return JSONResponse({"code": received.outcome.status, "msg": received.message}, status_code=received.outcome.status)


@router.get("/livez", summary="Liveness of this process alone: answered by its event loop, Redis not asked")
async def livez() -> dict[str, str]:
    # A probe that restarts the process must not fail for what a restart cannot mend (Redis away: that
    # is /healthz's 503, which takes the process out of a load balancer instead).
    return {"status": "ok"}


@router.get(
    "/healthz",
    response_model=Health,
    response_model_exclude_none=True,
    responses={503: {"model": Health}},
    summary="Liveness: the status for anyone, the details (Redis, workers seen) with an ops token",
)
def healthz(web: WebDep, operator: Operator) -> Any:
    try:
        redis_ok = bool(web.redis.ping())
    except redis.RedisError:
        redis_ok = False
    if not redis_ok:
        down = {"status": "down", "redis": False, "workers": []} if operator else {"status": "down"}
        return JSONResponse(down, status_code=503)
    workers = web.workers_seen()
    status: Literal["ok", "degraded"] = "ok" if workers else "degraded"
    return Health(status=status, redis=True, workers=workers) if operator else Health(status=status)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
            "description": "Prometheus text format",
        },
        401: {"model": Problem, "description": "An ops token (IMAGINEQ_OPS_TOKENS) is required"},
    },
    summary="Prometheus metrics, read from Redis at scrape time",
    # Shown with a lock in /docs: the ops token goes in the same bearer header as an ingress token.
    openapi_extra={"security": [{"HTTPBearer": []}]},
)
def metrics(web: WebDep, operator: Operator) -> Response:
    if not operator:
        raise HTTPException(401, "an ops token is required", {"WWW-Authenticate": "Bearer"})
    return Response(generate_latest(web.registry), media_type=CONTENT_TYPE_LATEST)
