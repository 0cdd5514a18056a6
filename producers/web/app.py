"""The ``web`` app: the FastAPI application built from settings, its middleware and routes."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from config.settings import Settings, get_settings
from producers.web.body_limit import BodyLimit
from producers.web.context import Web
from producers.web.handlers import method_not_allowed, validation_error
from producers.web.jobs_routes import router as jobs_router
from producers.web.models import Problem
from producers.web.ops_routes import router as ops_router

log = logging.getLogger("imagineq.http")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    web = Web(settings)
    if not settings.principals():
        log.warning("no ingress principals or tokens configured: every /v1/jobs request will be refused (401)")
    app = FastAPI(
        title="ImagineQ",
        version="0.1.0",
        summary="Text prompts to stored Grok Imagine videos",
        # The schema and its UIs describe every route to whoever asks: only where wanted.
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url="/redoc" if settings.docs_enabled else None,
        responses={413: {"model": Problem, "description": "Request body too large"}},
    )
    app.state.web = web
    app.add_middleware(BodyLimit, max_bytes=settings.ingress_max_body_bytes)
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(405, method_not_allowed)  # type: ignore[arg-type]
    app.include_router(jobs_router)
    app.include_router(ops_router)
    app.router.add_event_handler("shutdown", web.close)
    return app
