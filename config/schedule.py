"""Celery beat's schedule, kept in Redis by celery-redbeat so that only one beat ever schedules.

Three entries: the reconciler every ``reconcile_interval_s`` (its messages expire after one interval, so
a stopped poll queue never piles them up), the accounts' balances every ``credits.balance_interval_s``
(``chat/credit``) and, when an inbox is configured, the nightly inbox pickup at
``nightly_cron`` (UTC). Every running beat tries to take redbeat's lock (``<prefix>:redbeat:lock``); the
one holding it schedules and renews it every loop (at most ``beat_lock_timeout_s / 5``), the others wait,
and take over at most ``beat_lock_timeout_s`` after the holder died.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Final

from celery.schedules import crontab

from config.celery import (
    REDIS_SOCKET_OPTIONS,
    TASK_BALANCES,
    TASK_INBOX,
    TASK_RECONCILE,
    sentinel_auth,
    sentinel_data_node,
)
from config.settings import Settings, sentinel_nodes

RECONCILE_ENTRY: Final = "imagineq-reconcile"
BALANCES_ENTRY: Final = "imagineq-balances"
NIGHTLY_ENTRY: Final = "imagineq-nightly-inbox"
#: redbeat's own Redis client: notice a dead Redis instead of hanging; retry a lost connection for 60 s.
REDIS_OPTIONS: Final = {**REDIS_SOCKET_OPTIONS, "retry_period": 60}


def nightly_crontab(expression: str) -> crontab:
    """A crontab from ``minute hour day-of-month month day-of-week`` (already checked by Settings)."""
    minute, hour, day_of_month, month_of_year, day_of_week = expression.split()
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month_of_year,
        day_of_week=day_of_week,
    )


def redbeat_redis(settings: Settings) -> dict[str, Any]:
    """redbeat's Redis: the broker's (redbeat falls back to ``broker_url``), or for a Sentinel list
    redbeat's own Sentinel form (``redis-sentinel://`` with the Sentinels, the master's name and the
    passwords as options).

    The URL is never written into ``redbeat_redis_url``: every worker's configuration is shown to whoever
    asks (``celery inspect conf``, Flower's Config tab), and Celery masks the password of ``broker_url``
    and of keys named like a secret, not of a key called ``..._url``."""
    nodes = sentinel_nodes(settings.redis_url)
    if nodes is None:
        return {"redbeat_redis_options": REDIS_OPTIONS}
    options: dict[str, Any] = {
        **REDIS_OPTIONS,
        "sentinels": nodes,
        "service_name": settings.redis_sentinel_master,
        **sentinel_data_node(settings),
    }
    if settings.redis_sentinel_password is not None:
        options["sentinel_kwargs"] = sentinel_auth(settings)
    return {"redbeat_redis_url": "redis-sentinel://", "redbeat_redis_options": options}


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    interval = settings.reconcile_interval_s
    schedule: dict[str, dict[str, Any]] = {
        RECONCILE_ENTRY: {
            "task": TASK_RECONCILE,
            "schedule": timedelta(seconds=interval),
            "options": {"expires": max(interval, 1.0)},
        },
        BALANCES_ENTRY: {
            "task": TASK_BALANCES,
            "schedule": timedelta(seconds=settings.credits.balance_interval_s),
            "options": {"expires": settings.credits.balance_interval_s},
        },
    }
    if settings.inbox:
        schedule[NIGHTLY_ENTRY] = {"task": TASK_INBOX, "schedule": nightly_crontab(settings.nightly_cron)}
    return schedule


def redbeat_key_prefix(redis_prefix: str) -> str:
    """celery-redbeat's key prefix inside deployment prefix ``redis_prefix`` (``core.keys`` names it)."""
    return f"{redis_prefix}:redbeat:"


def beat_config(settings: Settings) -> dict[str, Any]:
    """The beat part of the Celery configuration (redbeat's Redis settings given explicitly)."""
    prefix = redbeat_key_prefix(settings.redis_prefix)
    lock_timeout = settings.beat_lock_timeout_s
    return {
        "beat_schedule": beat_schedule(settings),
        # The lock is renewed every loop: loop well inside its timeout.
        "beat_max_loop_interval": max(1.0, lock_timeout / 5),
        **redbeat_redis(settings),
        "redbeat_key_prefix": prefix,
        "redbeat_lock_key": f"{prefix}lock",
        "redbeat_lock_timeout": lock_timeout,
    }
