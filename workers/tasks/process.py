"""This worker process's clients and the Celery signals that build, check and close them."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from config.celery import POLL_QUEUE, STORE_QUEUE, SUBMIT_QUEUE
from config.settings import ConfigError, get_settings
from core import tracing
from workers.runtime import Runtime

log = logging.getLogger("imagineq.tasks")


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()
#: The queues whose tasks call the upstream: a worker of any of them needs an account.
UPSTREAM_QUEUES = frozenset({SUBMIT_QUEUE, POLL_QUEUE, STORE_QUEUE})


def runtime() -> Runtime:
    """This process's clients, built on first use (after the pool forks)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime.build(get_settings())
        return _runtime


@worker_init.connect
def _require_accounts(sender: Any = None, **_: Any) -> None:
    """A worker of a queue that calls the upstream (submit, poll, store) without an upstream account
    would fail every job and strand it: refuse to start instead, naming the missing setting (exit status
    2, like the CLI). A notify worker calls no upstream and is given no key (compose, Kubernetes): it
    starts without one. SystemExit, because Celery logs and ignores exceptions raised by signal receivers."""
    selected = sender.app.amqp.queues.consume_from if sender is not None else None  # None: every queue
    if selected and not set(selected) & UPSTREAM_QUEUES:
        return
    try:
        get_settings().require_accounts()
    except ConfigError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None


@worker_process_init.connect
def _reset_after_fork(**_: Any) -> None:
    global _runtime
    _runtime = None
    # Each pool process traces on its own (an exporter's thread does not survive a fork), named by the
    # worker's queues: imagineq-submit, imagineq-poll, imagineq-store, imagineq-notify.
    tracing.setup(worker_role(sys.argv))


@worker_process_shutdown.connect
def _close_runtime(**_: Any) -> None:
    tracing.flush()
    if _runtime is not None:
        _runtime.close()


def worker_role(argv: list[str]) -> str:
    """The queues a worker consumes (``-Q submit``), from its command line: its role in traces."""
    for index, arg in enumerate(argv):
        if arg in ("-Q", "--queues") and index + 1 < len(argv):
            return argv[index + 1].replace(",", "+")
        if arg.startswith("--queues="):
            return arg.split("=", 1)[1].replace(",", "+")
    return "worker"
