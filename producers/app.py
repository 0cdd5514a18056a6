"""The ``web`` process's application: the HTTP API (:mod:`producers.web`) and, when enabled, the
dashboard on top of it (:mod:`producers.dashboard`, which builds on the API's context)."""

from __future__ import annotations

from fastapi import FastAPI

from config.settings import Settings, get_settings
from producers.dashboard.routes import add_dashboard
from producers.web.app import create_api


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = create_api(settings)
    if settings.dashboard.enabled:
        add_dashboard(app, app.state.web)
    return app
