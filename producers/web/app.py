"""The ``web`` app: the FastAPI application built from settings, its middleware and routes."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from config.settings import Settings, get_settings
from core.errors import NotReplicated, OverBudget, RedisFull
from producers.web.batches_routes import router as batches_router
from producers.web.body_limit import BodyLimit
from producers.web.context import Web
from producers.web.costs_routes import router as costs_router
from producers.web.events_routes import router as events_router
from producers.web.handlers import method_not_allowed, not_accepted, over_budget, validation_error
from producers.web.jobs_routes import router as jobs_router
from producers.web.models import Problem
from producers.web.ops_routes import router as ops_router
from producers.web.workflows_routes import router as workflows_router

log = logging.getLogger("imagineq.http")


def create_api(settings: Settings | None = None) -> FastAPI:
    """The HTTP API (jobs, events, callbacks, operations, docs) without the dashboard, which
    :func:`producers.app.create_app` adds on top."""
    settings = settings or get_settings()
    web = Web(settings)
    if not settings.principals():
        log.warning("no ingress principals or tokens configured: every /v1/jobs request will be refused (401)")
    app = FastAPI(
        title="ImagineQ",
        version="0.1.0",
        summary="Text prompts to stored Grok Imagine videos",
        # The schema and its UI describe every route to whoever asks: only where wanted.
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        docs_url=None,  # served below, from local assets
        redoc_url=None,  # ReDoc ships no offline bundle: one UI, and it works offline
        responses={413: {"model": Problem, "description": "Request body too large"}},
    )
    app.state.web = web
    app.add_middleware(BodyLimit, max_bytes=settings.ingress_max_body_bytes)
    # Outermost: the client's address and scheme are the ones trusted proxies forward (nobody's by
    # default; uvicorn runs with --no-proxy-headers, so this is the only place they are believed).
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.web_trusted_proxies)
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(405, method_not_allowed)  # type: ignore[arg-type]
    app.add_exception_handler(RedisFull, not_accepted)  # type: ignore[arg-type]
    app.add_exception_handler(NotReplicated, not_accepted)  # type: ignore[arg-type]
    app.add_exception_handler(OverBudget, over_budget)  # type: ignore[arg-type]
    app.include_router(jobs_router)
    app.include_router(workflows_router)
    app.include_router(costs_router)
    app.include_router(batches_router)
    app.include_router(events_router)
    app.include_router(ops_router)
    app.router.add_event_handler("shutdown", web.close)
    if settings.docs_enabled:
        add_docs(app)
    return app


#: Where the Swagger UI's own files are served from.
DOCS_ASSETS = "/docs/assets"


def add_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the files the ``fastapi-swagger`` package ships (a current Swagger UI 5,
    which renders the OpenAPI 3.1 document FastAPI writes), never from a CDN, so the page works on a
    network that reaches nothing outside."""
    from importlib.resources import files

    assets = Path(str(files("fastapi_swagger") / "resources"))
    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")

    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} – API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
