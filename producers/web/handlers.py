"""Error answers in the API's own shapes: 405 with every allowed method, 422 naming the field as sent,
503 when Redis has no room for new jobs or no replica acknowledged them."""

from __future__ import annotations

from fastapi import HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.routing import Match

from core.errors import NotReplicated, OverBudget, RedisFull


async def method_not_allowed(request: Request, exc: HTTPException) -> JSONResponse:
    """405 with ``Allow`` listing the methods of *every* route on the path (Starlette names only one)."""
    allowed: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, APIRoute) and route.matches(request.scope)[0] is not Match.NONE:
            allowed |= route.methods or set()
    return JSONResponse(
        {"detail": "Method Not Allowed"}, status_code=405, headers={"Allow": ", ".join(sorted(allowed))}
    )


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 shape; the loc names the field as sent."""
    issues = [
        {"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}
        for error in exc.errors()
    ]
    return JSONResponse({"detail": jsonable_encoder(issues)}, status_code=422)


async def not_accepted(request: Request, exc: RedisFull | NotReplicated) -> JSONResponse:
    """503 with Retry-After: Redis has no room for new jobs, or no replica acknowledged them in time (nothing
    was accepted; the same request may be sent again)."""
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after_s)})


async def over_budget(request: Request, exc: OverBudget) -> JSONResponse:
    """402 naming the budget, its limit, what it has charged and reserved (nothing was written or spent)."""
    return JSONResponse(exc.to_dict(), status_code=402)
