"""The upstream's callbacks and the operational endpoints: ``/healthz`` and ``/metrics``."""

from __future__ import annotations

from typing import Annotated, Any

import redis
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from producers.web.context import WebDep
from producers.web.models import CallbackReply, Health

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


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}}, summary="Liveness")
def healthz(web: WebDep) -> Any:
    try:
        redis_ok = bool(web.redis.ping())
    except redis.RedisError:
        redis_ok = False
    if not redis_ok:
        return JSONResponse({"status": "down", "redis": False, "workers": []}, status_code=503)
    workers = web.workers_seen()
    return Health(status="ok" if workers else "degraded", redis=True, workers=workers)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}, "description": "Prometheus text format"}
    },
    summary="Prometheus metrics, read from Redis at scrape time",
)
def metrics(web: WebDep) -> Response:
    return Response(generate_latest(web.registry), media_type=CONTENT_TYPE_LATEST)
