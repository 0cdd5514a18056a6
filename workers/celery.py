"""The Celery app (``celery -A workers worker``): wiring only; tasks live in ``workers.tasks``."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import heartbeat_sent, setup_logging

from config.celery import celery_config
from config.schedule import beat_config
from config.settings import Settings, get_settings
from workers import liveness
from workers.broker import use_for_redis_urls
from workers.logs import configure_logging


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    use_for_redis_urls()
    app = Celery("imagineq", set_as_current=True)
    app.conf.update(celery_config(settings))
    app.conf.update(beat_config(settings))
    app.conf.imports = ("workers.tasks", "workers.reconcile", "workers.batch.nightly")
    # The parts of Celery replaced here, named as Celery loads them (config, below, names none of ours):
    # a consumer whose rate_limit delivers its configured rate, and a beat that rides out a lost Redis.
    app.conf.worker_consumer = "workers.consumer:Consumer"
    app.conf.beat_scheduler = "workers.beat:Scheduler"
    from workers.notify.dispatch import DispatchStep

    app.steps["worker"].add(DispatchStep)  # active only in workers that consume the notify queue
    from workers.release import ReleaseStep

    app.steps["worker"].add(ReleaseStep)  # active only in workers that consume the submit queue
    return app


# Each event heartbeat of a worker's main loop touches its alive file (workers.liveness).
heartbeat_sent.connect(liveness.on_heartbeat)


@setup_logging.connect
def _configure_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Workers and beat log through ``workers.logs`` (text or JSON, redacted). A receiver here
    makes Celery leave the root logger alone (``worker_hijack_root_logger`` is off anyway); ``-l`` is
    the level unless ``IMAGINEQ_LOG_LEVEL`` is set. Pool children inherit the handler when they fork."""
    configure_logging(get_settings(), service="celery", level=loglevel)


app = create_app()
