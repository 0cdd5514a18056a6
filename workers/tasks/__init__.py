"""The three steps of a job — ``chain(submit, poll, store)`` — and their idempotency rules.

A queued job's message is ``submit`` alone: the backlog can be millions of jobs deep, and a chain
serialised into every waiting message would double its size in Redis. When submit has created the
upstream task it links the rest, ``chain(poll, store)``, so from there on a job is one chain.

Messages carry the job id only. Every step re-reads the job record (the truth), acts only when the job
is in the state the step expects, and moves it on with a compare-and-set, so a redelivered message, a
callback and a poll can race safely: whoever loses the CAS does nothing.

Retries are decided from the error class alone (``core.errors``): waiting for quota, cooldowns and
pauses re-publish the job without ETA and never count against the job; transient errors count and back
off; fatal errors fail the job with a reason.
"""

from __future__ import annotations

# Importing the step modules registers their tasks with the app (``app.conf.imports`` names this package).
from workers.tasks import balances, deliver, poll, store, submit
from workers.tasks.process import runtime

__all__ = ["balances", "deliver", "poll", "runtime", "store", "submit"]
