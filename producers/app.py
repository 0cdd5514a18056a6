"""The ``web`` process's application: the HTTP API (:mod:`producers.web`) and, when enabled, the
dashboard on top of it (:mod:`producers.dashboard`, which builds on the API's context)."""

from __future__ import annotations

from fastapi import FastAPI

from config.settings import Settings, get_settings
from core import tracing
from producers.dashboard.routes import add_dashboard
from producers.web.app import create_api


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    traced = tracing.setup("web")  # first: the producer the API builds would name the process otherwise
    app = create_api(settings)
    if settings.dashboard.enabled:
        add_dashboard(app, app.state.web)
    if traced:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        # The server spans of the web's requests; a job enqueued by one links its trace to it.
        FastAPIInstrumentor.instrument_app(app, server_request_hook=tracing.server_request_hook)
    return app
