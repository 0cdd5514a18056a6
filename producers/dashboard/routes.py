"""The dashboard's pages and actions (server-rendered Jinja2; one small script refreshes the live parts).

Every page needs a sign-in (:mod:`producers.dashboard.sessions`); what it shows follows the signed-in
principal: an admin sees every job, anyone else their own jobs only (someone else's job is a 404, as in
the API), the quotas and queues (no tenant's data), and no batches (operators submit those).
"""

from __future__ import annotations

import time
from functools import cached_property
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from config.settings import PrincipalSettings
from core.jobs import KEY_MAX_CHARS, JobState
from core.workflows import workflow_summary
from producers.dashboard.costs import costs_view
from producers.dashboard.data import DashboardData, batch_progress, timeline, workflow_graph
from producers.dashboard.rendering import HERE, not_found, origin_of, render
from producers.dashboard.sessions import COOKIE, Session, SessionStore, csrf_ok
from producers.rules import NotCancelable
from producers.web.context import Web, client_address
from producers.web.jobs_routes import job_or_404
from producers.web.workflows_routes import workflow_or_404
from workers.notify.store import delivery_log
from workers.storage import build_s3_client
from workers.storage.sidecar import read_sidecar

router = APIRouter(include_in_schema=False)
PAGE_ROWS = 50


class Dashboard:
    """The dashboard's state in one web process: data readers, sessions, S3 clients (made on first use,
    so a web that never shows a job page never builds them)."""

    def __init__(self, web: Web) -> None:
        settings = web.settings
        self.web = web
        self.data = DashboardData(web)
        self.sessions = SessionStore(web.redis, web.keys, settings.principals(), ttl_s=settings.dashboard.session_ttl_s)

    @cached_property
    def s3(self) -> Any:
        return build_s3_client(self.web.settings.s3, self.web.settings.http)

    def presigned(self, uri: str) -> str | None:
        return self.web.presigned(uri)


def dashboard_of(request: Request) -> Dashboard:
    dashboard: Dashboard = request.app.state.dashboard
    return dashboard


class SignInNeeded(Exception):
    pass


def signed_in(request: Request) -> Session:
    session = dashboard_of(request).sessions.find(request.cookies.get(COOKIE))
    if session is None:
        raise SignInNeeded
    return session


DashboardDep = Annotated[Dashboard, Depends(dashboard_of)]
SessionDep = Annotated[Session, Depends(signed_in)]


def check_same_origin(request: Request) -> None:
    """Refuse a POST a browser sent from another site: its ``Origin`` (when sent) must be the dashboard's
    own, and ``Sec-Fetch-Site`` (when sent) must not say cross-site."""
    origin = request.headers.get("origin")
    if origin is not None and origin != origin_of(str(request.base_url)):
        raise HTTPException(403, "cross-origin request refused")
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise HTTPException(403, "cross-site request refused")


def check_action(request: Request, session: Session, csrf: str | None) -> None:
    """A POST must carry the session's CSRF token, and come from the dashboard's own origin."""
    check_same_origin(request)
    if not csrf_ok(session, csrf):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")


#: What an action's outcome says on the job's page: the page is given one of these codes, never text, so
#: a link cannot make the dashboard show words of someone else's choosing.
NOTICES = {
    "canceled": "Canceled.",
    "queued": "Queued again.",
    "not-cancelable": "This job is past queued: it can no longer be canceled.",
    "not-resubmittable": "Only a failed job that a new attempt may fix can be queued again.",
    "over-limit": "Not queued again: this principal is at one of its limits; try again later.",
}


def owner_filter(principal: PrincipalSettings, wanted: str | None) -> str | None:
    """Whose jobs a principal's page lists: an admin chooses (None: everyone's), anyone else their own."""
    return (wanted or None) if principal.admin else principal.name


def parse_state(value: str | None) -> JobState | None:
    """The form's state filter: empty for every state."""
    if not value:
        return None
    try:
        return JobState(value)
    except ValueError:
        raise HTTPException(422, f"state must be one of {', '.join(s.value for s in JobState)}") from None


# -- sign-in ------------------------------------------------------------------------------------------


@router.get("/signin")
def signin_page(request: Request) -> Response:
    return render(request, "signin.html", None)


@router.post("/signin")
def signin(request: Request, dashboard: DashboardDep, token: Annotated[str, Form(max_length=512)] = "") -> Response:
    # A sign-in posted from another site would sign the browser in as the attacker (login CSRF).
    check_same_origin(request)
    throttle = dashboard.web.throttle
    address = client_address(request)
    throttle.refuse_if_blocked(address)
    principal = dashboard.web.principals.find(token.strip()) if token.strip() else None
    if principal is None:
        throttle.failed(address)
        return render(request, "signin.html", None, status_code=401, error="Unknown token.")
    session_id = dashboard.sessions.open(principal)
    response = RedirectResponse("/", status_code=303)
    settings = dashboard.web.settings.dashboard
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=settings.session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=settings.secure_cookies or request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/signout")
def signout(
    request: Request,
    dashboard: DashboardDep,
    session: SessionDep,
    csrf: Annotated[str | None, Form(max_length=128)] = None,
) -> Response:
    check_action(request, session, csrf)
    dashboard.sessions.close(request.cookies.get(COOKIE))
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


# -- pages --------------------------------------------------------------------------------------------


@router.get("/")
def overview(request: Request, dashboard: DashboardDep, session: SessionDep) -> Response:
    principal = session.principal
    if not principal.admin:
        # A tenant sees its own work only: no accounts, credits, queues or throughput of the deployment.
        own = dashboard.data.tenant_overview(principal)
        return render(request, "overview.html", session, tenant=own, admin=False, now=time.time())
    data = dashboard.data.overview()
    return render(request, "overview.html", session, overview=data, admin=True, now=time.time())


@router.get("/jobs")
def jobs(
    request: Request,
    dashboard: DashboardDep,
    session: SessionDep,
    state: Annotated[str | None, Query(max_length=20)] = None,
    batch: Annotated[str | None, Query(max_length=KEY_MAX_CHARS)] = None,
    owner: Annotated[str | None, Query(max_length=64)] = None,
    q: Annotated[str | None, Query(max_length=64)] = None,
    before: Annotated[str | None, Query(max_length=120, pattern=r"^[0-9.]+~[0-9a-f]{1,64}$")] = None,
) -> Response:
    owner_wanted = owner_filter(session.principal, owner)
    chosen = parse_state(state)
    if q and q.strip():
        rows = dashboard.data.search(q, owner=owner_wanted)
        if len(rows) == 1:
            return RedirectResponse(f"/jobs/{rows[0].job.id}", status_code=303)
        following = None
    else:
        position = None
        if before:
            score, _, job_id = before.partition("~")
            position = (float(score), job_id)
        rows, after = dashboard.data.newest_jobs(
            state=chosen, batch=batch or None, owner=owner_wanted, before=position, limit=PAGE_ROWS
        )
        following = None
        if after is not None:
            query = {k: v for k, v in request.query_params.items() if k not in ("before", "partial")}
            following = "/jobs?" + urlencode({**query, "before": f"{after[0]!r}~{after[1]}"})
    return render(
        request,
        "jobs.html",
        session,
        rows=rows,
        states=list(JobState),
        state=chosen,
        batch=batch or "",
        owner=owner or "",
        q=q or "",
        following=following,
        admin=session.principal.admin,
    )


@router.get("/jobs/{job_id}")
def job_page(request: Request, dashboard: DashboardDep, session: SessionDep, job_id: str) -> Response:
    try:
        job = job_or_404(dashboard.web, session.principal, job_id)
    except HTTPException as missing:
        if missing.status_code != 404:
            raise
        return not_found(request, session, str(missing.detail), "/jobs", "jobs")
    sidecar = None
    if job.state is JobState.STORED and job.s3_uri:
        bucket, _, key = job.s3_uri.removeprefix("s3://").partition("/")
        try:
            sidecar = read_sidecar(dashboard.s3, bucket, key)
        except Exception as error:  # the page still shows the job when S3 is away
            sidecar = {"unavailable": str(error)}
    # Each output through a short-lived link: videos play, images show in a gallery.
    outputs = [
        {**output, "link": dashboard.presigned(str(output["uri"]))}
        for output in (job.outputs if job.state is JobState.STORED else [])
    ]
    videos = [o for o in outputs if str(o.get("content_type", "video/mp4")).startswith("video/") and o["link"]]
    images = [o for o in outputs if str(o.get("content_type", "")).startswith("image/") and o["link"]]
    video = videos[0]["link"] if videos else None
    return render(
        request,
        "job.html",
        session,
        media=video or (images[0]["link"] if images else None),
        job=job,
        steps=timeline(job),
        deliveries=delivery_log(dashboard.web.redis, dashboard.web.keys, job.id),
        sidecar=sidecar,
        video=video,
        videos=videos,
        images=images,
        notice=NOTICES.get(request.query_params.get("notice", "")),
    )


@router.post("/jobs/{job_id}/{action}")
def act(
    request: Request,
    dashboard: DashboardDep,
    session: SessionDep,
    job_id: str,
    action: Literal["cancel", "resubmit"],
    csrf: Annotated[str | None, Form(max_length=128)] = None,
) -> Response:
    """Cancel a queued job, or queue a failed one again; the job's page then says what happened."""
    check_action(request, session, csrf)
    web = dashboard.web
    job = job_or_404(web, session.principal, job_id)
    notice = "canceled" if action == "cancel" else "queued"
    try:
        if action == "cancel":
            web.producer.cancel(job.id, by=f"from the dashboard by {session.principal.name}")
        else:
            # A resubmit makes a finished job live again: the principal's limits hold as for a new job.
            with web.limits.admitted(session.principal, [job.id], new_records=False):
                web.producer.resubmit(job)
    except NotCancelable:
        notice = "not-cancelable"
    except ValueError:
        notice = "not-resubmittable"
    except HTTPException as refused:
        if refused.status_code != 429:
            raise
        notice = "over-limit"
    return RedirectResponse(f"/jobs/{job.id}?{urlencode({'notice': notice})}", status_code=303)


@router.get("/workflows")
def workflows(request: Request, dashboard: DashboardDep, session: SessionDep) -> Response:
    store, principal = dashboard.web.producer.workflows, session.principal
    rows = []
    for workflow_id in store.recent(100):
        workflow = store.get(workflow_id)
        if workflow is not None and (principal.admin or workflow.owner == principal.name):
            rows.append(workflow_summary(store, dashboard.web.jobs, workflow_id))
    return render(request, "workflows.html", session, rows=rows[:50])


@router.get("/workflows/{workflow_id}")
def workflow_page(request: Request, dashboard: DashboardDep, session: SessionDep, workflow_id: str) -> Response:
    try:
        workflow_or_404(dashboard.web, session.principal, workflow_id)
    except HTTPException as missing:
        if missing.status_code != 404:
            raise
        return not_found(request, session, str(missing.detail), "/workflows", "workflows")
    summary = workflow_summary(dashboard.web.producer.workflows, dashboard.web.jobs, workflow_id)
    # Each node's first image, through a short-lived link, drawn in its box.
    thumbs: dict[str, str] = {}
    for job in dashboard.web.jobs.get_many([node["job_id"] for node in summary["nodes"]]):
        if job is None or job.state is not JobState.STORED:
            continue
        image = next((o for o in job.outputs if str(o.get("content_type", "")).startswith("image/")), None)
        link = dashboard.presigned(str(image["uri"])) if image is not None else None
        if link:
            thumbs[job.id] = link
    graph = workflow_graph(summary, thumbs)
    media = next(iter(thumbs.values()), None)
    return render(request, "workflow.html", session, media=media, workflow=summary, graph=graph)


@router.get("/costs")
def costs(request: Request, dashboard: DashboardDep, session: SessionDep) -> Response:
    view = costs_view(dashboard.web, session.principal)
    return render(request, "costs.html", session, costs=view, admin=session.principal.admin)


@router.get("/batches")
def batches(request: Request, dashboard: DashboardDep, session: SessionDep) -> Response:
    shown = dashboard.data.recent_batches() if session.principal.admin else []
    rows = [(status, batch_progress(status)) for status in shown]
    return render(request, "batches.html", session, rows=rows, admin=session.principal.admin)


@router.get("/batches/{batch_id}/manifest")
def manifest(dashboard: DashboardDep, session: SessionDep, batch_id: str) -> Response:
    status = dashboard.data.batches.get(batch_id) if session.principal.admin else None
    link = dashboard.presigned(status.manifest) if status is not None and status.manifest else None
    if link is None:
        raise HTTPException(404, f"batch {batch_id} has no manifest in S3")
    return RedirectResponse(link, status_code=303)


def add_dashboard(app: FastAPI, web: Web) -> None:
    app.state.dashboard = Dashboard(web)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")

    async def to_signin(request: Request, _: SignInNeeded) -> Response:
        if request.query_params.get("partial") == "1":
            return Response(status_code=401)
        return RedirectResponse("/signin", status_code=303)

    app.add_exception_handler(SignInNeeded, to_signin)  # type: ignore[arg-type]
    app.include_router(router)
