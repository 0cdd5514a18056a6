"""What work costs over HTTP: a dry-run estimate of jobs, and the ledger's reports (bearer token required;
a principal sees its own costs and budgets, an admin everyone's)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool

from config.settings import PrincipalSettings
from core.credits import CreditPolicy, utc_day
from core.errors import ValidationError
from core.ledger import GROUPINGS, By, Ledger, parse_day
from producers.costs import Estimator
from producers.web.context import Caller, Web, WebDep
from producers.web.models import AUTH_ERRORS, Problem
from producers.web.uploads import read_jobs_body

router = APIRouter()
#: The most requests one estimate prices (as many as ``POST /v1/jobs`` takes).
MAX_ESTIMATE_ITEMS = 1000
Day = Annotated[str | None, Query(max_length=10, description="YYYY-MM-DD, or Nd: N days before today (UTC)")]


@router.post(
    "/v1/estimate",
    responses={**AUTH_ERRORS},
    summary="What one job, or a list of up to 1,000, would cost, and the caller's budgets; nothing is written",
)
async def post_estimate(request: Request, web: WebDep, caller: Caller) -> dict[str, Any]:
    """The body of ``POST /v1/jobs`` (one job or a list); each item's model and the fields that set its
    price are checked (the rest is checked when it is enqueued)."""
    body, _ = await read_jobs_body(request)
    return await run_in_threadpool(_estimate, web, caller, body)


def _estimate(web: Web, caller: PrincipalSettings, body: Any) -> dict[str, Any]:
    items = body if isinstance(body, list) else [body]
    if not 1 <= len(items) <= MAX_ESTIMATE_ITEMS:
        raise _invalid(["body"], f"must be a job or a list of 1 to {MAX_ESTIMATE_ITEMS} jobs (got {len(items)})")
    try:
        return Estimator(web.producer).requests(items, owner=caller.name).to_dict()
    except ValidationError as error:
        loc: list[str | int] = ["body"] if not isinstance(body, list) else ["body", error.item or 0]
        raise _invalid([*loc, *error.item_field.split(".")], error.message) from None


@router.get(
    "/v1/costs",
    responses={**AUTH_ERRORS, 403: {"model": Problem, "description": "Another principal's costs (admins only)"}},
    summary="Credits charged and reserved over a range of UTC days, grouped, with the caller's budgets",
)
def get_costs(
    web: WebDep,
    caller: Caller,
    by: Annotated[str, Query(pattern="^(" + "|".join(GROUPINGS) + ")$")] = "day",
    since: Day = None,
    until: Day = None,
    principal: Annotated[str | None, Query(max_length=64, description="An admin: one principal's only")] = None,
) -> dict[str, Any]:
    """A principal sees its own; an admin everyone's (or ``principal``'s)."""
    if principal is not None and not caller.admin and principal != caller.name:
        raise HTTPException(403, "only an admin may read another principal's costs")
    whose = principal if caller.admin else caller.name
    try:
        first = parse_day(since or "6d", field="since")
        last = parse_day(until, field="until") if until else utc_day()
        ledger = Ledger(web.producer.redis, web.producer.keys)
        report = ledger.report(CreditPolicy(web.settings), _by(by), first, last, principal=whose)
    except ValueError as error:
        raise _invalid(["query"], str(error)) from None
    return {**report.to_dict(), "principal": whose}


def _by(value: str) -> By:
    for grouping in GROUPINGS:
        if grouping == value:
            return grouping
    raise ValueError(f"by must be one of {', '.join(GROUPINGS)}")


def _invalid(loc: list[str | int], message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])
