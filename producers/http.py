"""The ``web`` process: HTTP ingress for jobs, the upstream's callbacks, ``/metrics`` and ``/healthz``.

Served by ``uvicorn producers.http:app``; :func:`producers.app.create_app` builds the app from a
``Settings`` (tests and benchmarks start it as a real uvicorn process). Handlers that touch Redis are
plain ``def``s, so FastAPI runs them in its thread pool and the event loop never blocks.

- ``/v1/jobs*`` needs ``Authorization: Bearer <token>`` of a principal (``ingress_principals``, or
  ``ingress_tokens`` for the admin ``default``; compared in constant time), and shows each principal its
  own jobs only (``producers/web/principals.py``);
  the callbacks path has its own per-job secret instead, ``/healthz``, ``/metrics`` and ``/openapi.json``
  are open (meant for probes and scrapers inside the deployment).
- Every request body is capped at ``ingress_max_body_bytes`` (413), whether or not it says its length.
- Validation errors are 422 in FastAPI's shape, ``loc`` naming the field (``["body", 3, "prompt"]``); a
  list is checked whole before anything is written.
- Listing (``GET /v1/jobs``) pages through the state index sorted sets (``<prefix>:state:<state>``, scored
  by the time the job entered the state), oldest first, states in ``JobState`` order when none is given.
  The cursor ``state~score~id`` is the position of the last entry looked at; any string of that shape
  is a valid position (ordered by state in ``JobState`` order, then score, then id). It is a live view:
  a job that changes state between pages can be missed or seen twice. ``batch`` filters the entries read,
  so a page may hold fewer than ``limit`` jobs while ``next_cursor`` is still set (at most
  ``SCAN_BUDGET_FACTOR`` × ``limit`` entries are read per page).
- ``/livez``: 200 while the process's event loop answers (a liveness probe; nothing else is asked).
- ``/healthz``: Redis ``PING`` decides the status code (503 when it fails); workers are "seen" when they
  answer a Celery ``control.ping`` (0.5 s timeout, result cached ``health_workers_cache_s``) — no worker
  makes the status ``degraded`` but stays 200, because the web itself can still take jobs.
"""

from __future__ import annotations

from config.settings import get_settings
from producers.app import create_app
from workers.logs import UVICORN_LOGGERS, configure_logging

__all__ = ["app", "create_app"]

# uvicorn imports this module after configuring its own loggers: from here on they (the access log
# included) write through workers.logs — text or JSON, secrets and callback tokens redacted.
configure_logging(get_settings(), service="web", level="INFO", take_over=UVICORN_LOGGERS)
app = create_app()
