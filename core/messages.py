"""Celery ``submit`` messages built directly, so a job record and its message are written together.

``enqueue_many`` must take thousands of jobs a second, and a message must never exist without its job.
So the producer builds the broker message itself — the exact Celery protocol-2 / kombu Redis-transport
envelope that ``send_task`` would LPUSH — and ``JobStore.create_many`` pushes the messages of the new
records only, once every record of the call is written (a producer that dies in between leaves queued
jobs without a message, which the reconciler re-publishes).

The envelope is checked against Celery's own (``tests/integration/test_messages.py``) and consumed by real
workers in every integration test.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any, Final

from config.celery import PRIORITY_BATCH, PRIORITY_INTERACTIVE, PRIORITY_STEPS, SUBMIT_QUEUE, TASK_SUBMIT
from core.jobs import Job, Priority
from core.keys import Keys

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def broker_priority(job: Job) -> int:
    """The broker priority of every message of ``job`` — its submit, its poll and its store, whoever
    publishes them (the producer, a worker, the web's wake-up, the reconciler): interactive work first,
    batch work last, a batch submitted at ``normal`` priority in between."""
    if job.priority_level is not None:
        return job.priority_level
    return PRIORITY_BATCH if job.priority is Priority.BATCH else PRIORITY_INTERACTIVE


#: A priority step's weight in a ready rank: more than any fair-share tag reaches (``ready_add.lua``).
STEP_WEIGHT: Final = 10**12
#: The principal of jobs no ingress principal enqueued (the Python API, the CLI, batch files): a name no
#: principal can have.
OPERATOR: Final = "@operator"


def ready_step(job: Job) -> int:
    """The job's priority step in the ready sets: 0 interactive, then each broker priority step down."""
    priority = broker_priority(job)
    return PRIORITY_STEPS.index(priority) if priority in PRIORITY_STEPS else 0


def fair_principal(job: Job) -> str:
    """Whose share a job counts against: its ingress principal, or the operator's."""
    return job.owner or OPERATOR


def created_ms(job: Job) -> str:
    """When the job was created, in ms, as 13 digits (the ready sets' lex order reads it)."""
    return f"{round(job.created_at * 1000):013d}"


def ready_place(job: Job) -> str:
    """Where the job may go, as its pool's ready meta keeps it: ``pin<TAB>estimate`` (the account it must run
    on, '' for any; its estimate in centi-credits, '' when unknown), so a dispatch sends it only to an account
    whose known balance can pay for it."""
    estimate = "" if job.estimate is None else str(round(job.estimate * 100))
    return f"{job.pin or ''}\t{estimate}"


def ready_rank(job: Job) -> str:
    """The job's rank in its pool's ready set as written when it first became ready; a job from before
    ranks were written goes first in its step."""
    return job.extra.get("rank") or f"{ready_step(job) * STEP_WEIGHT:.6f}"


@dataclass(frozen=True)
class BrokerMessage:
    queue_key: str
    payload: str


def submit_message(job: Job, *, keys: Keys) -> BrokerMessage:
    """The message ``app.send_task("imagineq.submit", args=(job.id,), priority=broker_priority(job))``
    would send."""
    job_id, priority = job.id, broker_priority(job)
    task_id = str(uuid.uuid4())
    body = json.dumps([[job_id], {}, _EMBED])
    headers: dict[str, Any] = {
        "lang": "py",
        "task": TASK_SUBMIT,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": repr((job_id,)),
        "kwargsrepr": "{}",
        "origin": _ORIGIN,
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    properties = {
        "correlation_id": task_id,
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": SUBMIT_QUEUE},
        "priority": priority,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    envelope = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": properties,
    }
    return BrokerMessage(keys.broker_queue(SUBMIT_QUEUE, priority), json.dumps(envelope))


_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
