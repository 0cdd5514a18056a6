"""The Celery app (``celery -A workers worker``): wiring only; tasks live in ``workers.tasks``."""

from __future__ import annotations

from celery import Celery

from config.celery import celery_config
from config.schedule import beat_config
from config.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("imagineq", set_as_current=True)
    app.conf.update(celery_config(settings))
    app.conf.update(beat_config(settings))
    app.conf.imports = ("workers.tasks", "workers.reconcile")
    return app


app = create_app()
