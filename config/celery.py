"""Celery configuration for this workload, built from Settings.

Why each choice (the workload: few, slow, quota-bound upstream calls; jobs whose truth is the Redis
job record, so every task is idempotent and safe to run twice):

- JSON only, ids only in messages: Flower shows arguments; prompts and keys never travel in them.
- No result backend: the job record is the truth; task results would be a second, stale copy.
- ``task_acks_late`` + ``task_reject_on_worker_lost`` on every queue: a worker that dies mid-task
  (SIGKILL, OOM, deploy) leaves its message to be redelivered. Every step re-reads the job record and
  does nothing when the job already moved on, so redelivery is safe.
- ``worker_prefetch_multiplier = 1``: a worker reserves one message per process. The backlog stays in
  Redis, however deep; a long store or a quota wait never strands other messages behind it.
- Waiting for quota never uses ETA/countdown (Celery would pull the backlog into worker memory and
  redeliver it after the visibility timeout). Only polls use countdowns, ≤ 30 s, and there are never
  more of them than jobs in progress (bounded by the 30-per-account lease).
- ``visibility_timeout`` (default 1 h) is longer than any task time limit and any countdown, so a
  message is redelivered only when its worker really died.
- Priorities: the Redis transport emulates them with one list per step; interactive jobs use priority 0
  (served first), batch jobs 9.
- Socket timeouts, keepalive and health checks so a worker notices a dead Redis instead of hanging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from kombu import Queue  # type: ignore[attr-defined]

from config.settings import Settings

SUBMIT_QUEUE = "submit"
POLL_QUEUE = "poll"
STORE_QUEUE = "store"
#: Outbound webhooks (workers/notify): deliveries, and the dispatcher in the workers consuming it.
NOTIFY_QUEUE = "notify"
QUEUES = (SUBMIT_QUEUE, POLL_QUEUE, STORE_QUEUE, NOTIFY_QUEUE)

#: Redis-transport priorities: lower is served first.
PRIORITY_INTERACTIVE = 0
PRIORITY_BATCH = 9
PRIORITY_STEPS = (PRIORITY_INTERACTIVE, 3, 6, PRIORITY_BATCH)
QUEUE_SEP = ":"

TASK_SUBMIT = "imagineq.submit"
TASK_POLL = "imagineq.poll"
TASK_STORE = "imagineq.store"
TASK_RECONCILE = "imagineq.reconcile"
TASK_DELIVER = "imagineq.deliver"
#: The nightly pickup of batch files from the inbox (beat, ``nightly_cron``).
TASK_INBOX = "imagineq.batch_inbox"
#: Every account's balance read from the upstream (beat, ``credits.balance_interval_s``).
TASK_BALANCES = "imagineq.balances"


@dataclass(frozen=True)
class TimeLimit:
    """A task's limits (seconds): the soft one raises inside the task so it can tidy up, the hard one
    kills its process (the message is then redelivered: every step is idempotent)."""

    soft_s: int
    hard_s: int

    def options(self) -> dict[str, int]:
        """As ``@app.task`` takes them."""
        return {"soft_time_limit": self.soft_s, "time_limit": self.hard_s}


#: Every task's limits, in one place: the tasks read them, and the broker's visibility timeout must
#: exceed the longest (``celery_config`` checks it), or a running task's message would be handed out again.
TIME_LIMITS: Final = {
    TASK_SUBMIT: TimeLimit(100, 120),
    TASK_POLL: TimeLimit(75, 90),
    TASK_STORE: TimeLimit(2900, 3000),
    TASK_DELIVER: TimeLimit(90, 120),
    TASK_RECONCILE: TimeLimit(240, 300),
    TASK_INBOX: TimeLimit(3300, 3400),
    TASK_BALANCES: TimeLimit(50, 60),
}
SUBMIT_TIME_LIMIT_S = TIME_LIMITS[TASK_SUBMIT].hard_s
POLL_TIME_LIMIT_S = TIME_LIMITS[TASK_POLL].hard_s
STORE_TIME_LIMIT_S = TIME_LIMITS[TASK_STORE].hard_s
#: The longest poll countdown (``PollSettings.schedule`` intervals are at most 30 s).
LONGEST_COUNTDOWN_S = 30


#: Every Redis client of a deployment (the broker, redbeat, ImagineQ's own): notice a dead Redis instead
#: of hanging on it, and keep idle connections checked.
REDIS_SOCKET_OPTIONS: Final = {
    "socket_timeout": 30,
    "socket_connect_timeout": 10,
    "socket_keepalive": True,
    "health_check_interval": 25,
}


def rate_limits(settings: Settings) -> dict[str, str]:
    """Per-worker smoothing derived from the account quotas (the global guard is the Redis limiter).

    Celery's ``rate_limit`` is per worker instance, so it can never be the global guard; it only spreads
    one worker's calls out, and it must never be what binds (``bench/rate_limit.py`` measures that a
    worker delivers the rate set here; ``workers/consumer.py`` is why it does). Submit: every
    in-progress slot of the pool per second, so one worker refills a burst's empty slots within a second.
    Poll: twice the accounts' recordInfo rate, since a job's poll message also runs once to book its
    first check without calling. Both can be set explicitly.
    """
    accounts = settings.accounts
    if not accounts:
        return {}
    slots = sum(a.in_progress_limit for a in accounts)
    record_info_per_s = sum(a.record_info_per_s for a in accounts)
    return {
        TASK_SUBMIT: settings.submit_rate_limit or f"{max(1, slots)}/s",
        TASK_POLL: settings.poll_rate_limit or f"{max(1, round(2 * record_info_per_s))}/s",
    }


def broker_prefix(settings: Settings) -> str:
    """Prefix of every broker key (queues, unacked messages), inside the deployment prefix."""
    return broker_key_prefix(settings.redis_prefix)


def broker_key_prefix(redis_prefix: str) -> str:
    """The broker's key prefix inside deployment prefix ``redis_prefix`` (``core.keys`` names the keys)."""
    return f"{redis_prefix}:celery:"


def sentinel_auth(settings: Settings) -> dict[str, Any]:
    """The Sentinels' own password, as the ``password`` of the connections to them (none: empty)."""
    password = settings.redis_sentinel_password
    return {} if password is None else {"password": password.get_secret_value()}


def sentinel_data_node(settings: Settings) -> dict[str, Any]:
    """The primary's (and replicas') database, user and password, from the first ``sentinel://`` URL
    (kombu's form: the user info of a Sentinel URL is the data nodes')."""
    first = urlsplit(settings.redis_url.split(";")[0].strip())
    database = first.path.strip("/")
    options: dict[str, Any] = {"db": int(database) if database else 0}
    if first.password:
        options["password"] = unquote(first.password)
    if first.username:
        options["username"] = unquote(first.username)
    return options


def sentinel_transport_options(settings: Settings) -> dict[str, Any]:
    """For a ``sentinel://`` broker URL: the master to follow and the Sentinels' password (kombu's
    sentinel transport, and Flower's Broker tab, read both from the transport options)."""
    if not settings.redis_url.startswith("sentinel://"):
        return {}
    sentinel_kwargs = {"socket_timeout": REDIS_SOCKET_OPTIONS["socket_timeout"], **sentinel_auth(settings)}
    return {"master_name": settings.redis_sentinel_master, "sentinel_kwargs": sentinel_kwargs}


def celery_config(settings: Settings) -> dict[str, Any]:
    longest_task, longest = max(TIME_LIMITS.items(), key=lambda item: item[1].hard_s)
    if settings.visibility_timeout_s <= longest.hard_s + LONGEST_COUNTDOWN_S:
        raise ValueError(
            f"visibility_timeout_s ({settings.visibility_timeout_s}) must exceed the longest task time "
            f"limit ({longest_task}: {longest.hard_s} s) plus the longest poll countdown ({LONGEST_COUNTDOWN_S} s)"
        )
    return {
        # The scheme selects the transport: workers.broker's (kombu's Redis transport, surviving a lost
        # connection without exiting), once workers.broker.use_for_redis_urls() ran (workers.celery).
        "broker_url": settings.redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            **REDIS_SOCKET_OPTIONS,
            "queue_order_strategy": "priority",
            "priority_steps": list(PRIORITY_STEPS),
            "sep": QUEUE_SEP,
            "global_keyprefix": broker_prefix(settings),
            **sentinel_transport_options(settings),
        },
        "broker_pool_limit": 10,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_backend": None,
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure": True,
        "worker_prefetch_multiplier": 1,
        # Long-lived pool processes are recycled (after their current task) when they grow too big.
        "worker_max_memory_per_child": settings.worker_max_memory_per_child_mb * 1024,
        "worker_max_tasks_per_child": settings.worker_max_tasks_per_child,
        "task_default_priority": PRIORITY_INTERACTIVE,
        "task_queues": [Queue(name) for name in QUEUES],  # type: ignore[no-untyped-call]
        "task_default_queue": SUBMIT_QUEUE,
        "task_routes": {
            TASK_SUBMIT: {"queue": SUBMIT_QUEUE},
            TASK_POLL: {"queue": POLL_QUEUE},
            TASK_STORE: {"queue": STORE_QUEUE},
            TASK_RECONCILE: {"queue": POLL_QUEUE},
            TASK_DELIVER: {"queue": NOTIFY_QUEUE},
            TASK_INBOX: {"queue": POLL_QUEUE},
            TASK_BALANCES: {"queue": POLL_QUEUE},
        },
        "task_create_missing_queues": False,
        "task_annotations": {name: {"rate_limit": limit} for name, limit in rate_limits(settings).items()},
        "task_time_limit": longest.hard_s,
        "worker_send_task_events": True,
        "task_send_sent_event": False,  # one more publish per message; Flower shows received/started
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_enable_remote_control": True,
        "timezone": "UTC",
        "enable_utc": True,
    }
