"""Every Redis key ImagineQ owns, in one place.

All keys start with the deployment prefix (``Settings.redis_prefix``, default ``iq``), so several
deployments can share one Redis. Lua scripts never build keys: callers pass them through KEYS.
"""

from __future__ import annotations

from bisect import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from config.celery import PRIORITY_STEPS, QUEUE_SEP, broker_key_prefix
from config.schedule import redbeat_key_prefix


@dataclass(frozen=True)
class Keys:
    prefix: str = "iq"

    # -- jobs ---------------------------------------------------------------------------------------
    def job(self, job_id: str) -> str:
        """Hash: the job record (the truth about a job)."""
        return f"{self.prefix}:job:{job_id}"

    def task_index(self, task_id: str) -> str:
        """String: upstream taskId → job id."""
        return f"{self.prefix}:task:{task_id}"

    def idempotency(self, key: str, owner: str | None = None) -> str:
        """String: producer idempotency key → job id; an ingress principal's keys are its own."""
        return f"{self.prefix}:idem:{key}" if owner is None else f"{self.prefix}:idem@{owner}:{key}"

    def owner_jobs(self, owner: str) -> str:
        """Sorted set: an ingress principal's jobs not yet seen finished (score = ms created)."""
        return f"{self.prefix}:principal:{owner}:jobs"

    def owner_kept(self, owner: str) -> str:
        """Sorted set: an ingress principal's job records not yet seen expired, finished ones included
        (score = ms created)."""
        return f"{self.prefix}:principal:{owner}:kept"

    def enqueue_bucket(self, owner: str) -> str:
        """Hash: token bucket for an ingress principal's enqueue rate (tokens, ts)."""
        return f"{self.prefix}:principal:{owner}:enqueue"

    def event_streams(self, owner: str) -> str:
        """Sorted set: an ingress principal's open event streams (member = stream id, score = lease end ms)."""
        return f"{self.prefix}:principal:{owner}:streams"

    def auth_failures(self, address: str) -> str:
        """Hash: token bucket of a client address's failed sign-ins and unknown tokens (tokens, ts)."""
        return f"{self.prefix}:auth-failures:{address}"

    def auth_lockout(self, address: str) -> str:
        """String with PX expiry: the client address has failed too often; its tokens are not even looked at."""
        return f"{self.prefix}:auth-lockout:{address}"

    def children(self, job_id: str) -> str:
        """Set: the derived jobs waiting for this job (released when it ends)."""
        return f"{self.prefix}:children:{job_id}"

    def workflow(self, workflow_id: str) -> str:
        """Hash: a workflow (owner, nodes as JSON, created_at, completed_at)."""
        return f"{self.prefix}:workflow:{workflow_id}"

    def workflow_idempotency(self, key: str, owner: str | None = None) -> str:
        """String: a workflow's idempotency key → workflow id (a principal's keys are its own)."""
        return f"{self.prefix}:wf-idem:{key}" if owner is None else f"{self.prefix}:wf-idem@{owner}:{key}"

    def workflows(self) -> str:
        """Sorted set: workflows not yet seen expired (score = ms created), for listing."""
        return f"{self.prefix}:workflows"

    def store_claim(self, job_id: str) -> str:
        """String with PX expiry: the token of the store step transferring the job's result."""
        return f"{self.job(job_id)}:store-claim"

    def early_callback(self, job_id: str) -> str:
        """String with TTL: the ``data`` of a callback that arrived while the job was ``submitting``."""
        return f"{self.job(job_id)}:early-callback"

    def callback_wake(self, job_id: str) -> str:
        """String with PX expiry: a poll woken by a callback is on its way (duplicates wake no more)."""
        return f"{self.job(job_id)}:callback-wake"

    def callback_seen(self, digest: str) -> str:
        """String with expiry: a signed ``(taskId, timestamp, signature)`` already accepted once."""
        return f"{self.prefix}:callback-seen:{digest}"

    def events(self) -> str:
        """Stream: one entry per job that ended (``job.<state>``) and per batch done (``batch.completed``),
        fields ``type job batch owner at``; trimmed to about ``Settings.events_max_len`` entries."""
        return f"{self.prefix}:events"

    # -- outbound webhooks (workers/notify) -------------------------------------------------------------
    def delivery(self, delivery_id: str) -> str:
        """Hash: one event's delivery to one endpoint (what, where, attempts, outcome)."""
        return f"{self.prefix}:delivery:{delivery_id}"

    def deliveries_due(self) -> str:
        """Sorted set: deliveries waiting for their next attempt (score = when, ms)."""
        return f"{self.prefix}:deliveries:due"

    def deliveries_sending(self) -> str:
        """Sorted set: deliveries a worker is sending (score = when that worker is presumed dead, ms)."""
        return f"{self.prefix}:deliveries:sending"

    def endpoint_breaker(self, url_digest: str) -> str:
        """Hash: an endpoint's failures in a row and until when it is left alone (its circuit breaker)."""
        return f"{self.prefix}:endpoint:{url_digest}"

    def job_deliveries(self, job_id: str) -> str:
        """List: the job's delivery log, newest first (one JSON entry per attempt)."""
        return f"{self.job(job_id)}:deliveries"

    def state_index(self, state: str) -> str:
        """Sorted set: job ids in ``state``, scored by the time they entered it (ms)."""
        return f"{self.prefix}:state:{state}"

    # -- dispatch: the queued jobs submitters choose from -----------------------------------------------
    def ready(self, pool: str) -> str:
        """Sorted set: a pool's queued jobs whose message is out (member = job id, score = rank: the job's
        priority step, then its fair-share tag; ``core/lua/ready_add.lua``)."""
        return f"{self.prefix}:ready:{pool}"

    def ready_meta(self, pool: str) -> str:
        """Hash: job id -> what dispatch needs of a ready job: its principal, step, creation ms and the
        account it must run on (a derived job: its parent's)."""
        return f"{self.prefix}:ready:{pool}:meta"

    def ready_age(self, pool: str) -> str:
        """Sorted set: a pool's ready jobs below interactive priority, by creation ms (aging)."""
        return f"{self.prefix}:ready:{pool}:age"

    def fair(self, pool: str) -> str:
        """Hash: a pool's fair-share state: each step's virtual time, each principal's last finish tag."""
        return f"{self.prefix}:fair:{pool}"

    def waiting(self) -> str:
        """Sorted set (all scores 0): every ready job as ``principal|created ms|job id``, so a principal's
        queued jobs are counted, and its oldest found, by lex range."""
        return f"{self.prefix}:waiting"

    def creation_log(self) -> str:
        """Sorted set: the last hour's dispatches, ``job id:ms:principal`` by ms (each principal's share)."""
        return f"{self.prefix}:creation-log"

    def dispatched(self) -> str:
        """Sorted set: jobs a submitter took from a ready set (score = ms); one still queued a while later
        lost its submitter between the take and its move, and goes back (the reconciler)."""
        return f"{self.prefix}:dispatched"

    def dispatch_wakes(self) -> str:
        """List: one entry per freed slot and per job made ready; submitters with nothing to dispatch BLPOP
        it (entries may be stale: a woken submitter just looks again)."""
        return f"{self.prefix}:dispatch-wakes"

    # -- quotas (per account, and per model pool) ----------------------------------------------------------
    def creations(self, account: str, pool: str | None = None) -> str:
        """Sorted set: the sliding log of a pool's creations (member unique per creation, score = ms);
        text-to-video's keeps the name it had before there were other pools."""
        return f"{self.prefix}:quota:{account}{_pool_part(pool)}:creations"

    def leases(self, account: str, pool: str | None = None) -> str:
        """Sorted set: a pool's in-progress leases (member = job id, score = lease expiry ms)."""
        return f"{self.prefix}:quota:{account}{_pool_part(pool)}:leases"

    def lease_owners(self, account: str, pool: str | None = None) -> str:
        """Hash: job id -> the principal a pool's lease is held for (share caps, in progress per principal)."""
        return f"{self.prefix}:quota:{account}{_pool_part(pool)}:lease-owners"

    def uploaded(self, account: str, sha256: str) -> str:
        """String with expiry: the URL of an image (by content) in the account's upstream file store, while
        it may still be named (``uploads.reuse_s`` of the store's 3 days)."""
        return f"{self.prefix}:upload:{account}:{sha256}"

    def create_requests(self, account: str) -> str:
        """Sorted set: the account's createTask requests of every model in the last rolling window."""
        return f"{self.prefix}:quota:{account}:create-requests"

    def cooldown(self, account: str) -> str:
        """String with PX expiry: submitters stay away while it exists (upstream 429/455)."""
        return f"{self.prefix}:quota:{account}:cooldown"

    def backoff(self, account: str) -> str:
        """String: consecutive cooldowns, for exponential backoff when no Retry-After is given."""
        return f"{self.prefix}:quota:{account}:backoff"

    def pause(self, account: str) -> str:
        """String: why the account is paused (402/433/401/505); cleared when credits return."""
        return f"{self.prefix}:quota:{account}:pause"

    def pause_check(self, account: str) -> str:
        """String with PX expiry: one credits check of a paused account at a time."""
        return f"{self.pause(account)}:check"

    def record_info_calls(self, account: str) -> str:
        """Sorted set: the account's recordInfo calls in the last rolling window (score = call ms)."""
        return f"{self.prefix}:quota:{account}:recordinfo-calls"

    def poll_plan(self, account: str) -> str:
        """Sorted set: the account's booked recordInfo checks (member = job id, score = slot ms)."""
        return f"{self.prefix}:poll-plan:{account}"

    def poll_owners(self, account: str) -> str:
        """Hash: job id -> the poll message that owns the job's booked check."""
        return f"{self.prefix}:poll-plan:{account}:owners"

    # -- batches ------------------------------------------------------------------------------------
    def batch(self, batch_id: str) -> str:
        """Hash: a batch's record (source, where its manifest goes, status, line and state counters)."""
        return f"{self.prefix}:batch:{batch_id}"

    def batch_jobs(self, batch_id: str) -> str:
        """List: one entry per input line, in line order (line, id, job id or the line's error)."""
        return f"{self.prefix}:batch:{batch_id}:jobs"

    def batch_pending(self, batch_id: str) -> str:
        """Set: the batch's job ids not yet counted terminal."""
        return f"{self.prefix}:batch:{batch_id}:pending"

    def batch_lock(self, batch_id: str, what: str) -> str:
        """String with PX expiry: one reader (``read``) or finaliser (``finalise``) of a batch at a time."""
        return f"{self.prefix}:batch:{batch_id}:lock:{what}"

    def dashboard_session(self, session_id_digest: str) -> str:
        """Hash with expiry: a dashboard sign-in (principal, CSRF token), by the sha256 of its cookie."""
        return f"{self.prefix}:ui-session:{session_id_digest}"

    def batches(self) -> str:
        """Sorted set: every batch id, scored by when it was first submitted (ms)."""
        return f"{self.prefix}:batches"

    def batches_active(self) -> str:
        """Set: batches read whole whose manifest is not written yet (the reconciler finalises them)."""
        return f"{self.prefix}:batches:active"

    # -- credits ------------------------------------------------------------------------------------
    def ledger_day(self, day: str) -> str:
        """Hash: one UTC day's credits (``YYYY-MM-DD``), centi-credits by ``kind|principal|dimension``
        (kind ``r`` reserved, ``c`` charged; dimension ``t`` total, ``m:<model>``, ``a:<account>``,
        ``b:<batch>``, ``w:<workflow>``; principal ``*`` for everyone's)."""
        return f"{self.prefix}:ledger:day:{day}"

    def ledger_month(self, month: str) -> str:
        """Hash: one UTC month's credits (``YYYY-MM``), ``kind|principal|t`` (the monthly budgets)."""
        return f"{self.prefix}:ledger:month:{month}"

    def ledger_total(self) -> str:
        """Hash: every credit since the deployment began, ``kind|*|m:<model>`` and ``kind|*|a:<account>``
        (Prometheus counters), never expiring."""
        return f"{self.prefix}:ledger:total"

    def ledger_batch(self, batch_id: str) -> str:
        """Hash: a batch's credits, ``r`` reserved and ``c`` charged (its budget)."""
        return f"{self.prefix}:ledger:batch:{batch_id}"

    def balance(self, account: str) -> str:
        """Hash: the account's balance as last read (``credits``, ``at`` ms) and the centi-credits ``spent``
        since (charges made after the reading): with its holds, what it can still pay."""
        return f"{self.prefix}:balance:{account}"

    def balance_check(self, account: str) -> str:
        """String with PX expiry: one balance reading of an account that cannot pay its jobs at a time."""
        return f"{self.balance(account)}:check"

    def balance_holds(self, account: str) -> str:
        """Sorted set: jobs sent towards the account whose task is not charged yet (member = job id, score =
        estimate in centi-credits), counted against its balance until charged or ended."""
        return f"{self.prefix}:balance:{account}:holds"

    # -- schedules and the reconciler ---------------------------------------------------------------
    def inbox_claim(self, identity: str) -> str:
        """String with expiry: an inbox file (by name and version) being picked up by one run."""
        return f"{self.prefix}:inbox:{identity}"

    def reconcile_lock(self) -> str:
        """String with PX expiry: one reconciler run at a time."""
        return f"{self.prefix}:reconcile:lock"

    def reconcile_suspects(self) -> str:
        """Set: queued job ids no broker message was found for in the last scan."""
        return f"{self.prefix}:reconcile:suspects"

    def redbeat(self) -> str:
        """Prefix of celery-redbeat's keys (schedule entries, its lock)."""
        return redbeat_key_prefix(self.prefix)

    # -- the Celery broker (kombu's Redis transport, under ``global_keyprefix``) ------------------------
    @property
    def broker_prefix(self) -> str:
        """Prefix of every broker key: the ``global_keyprefix`` of ``config.celery``."""
        return broker_key_prefix(self.prefix)

    def broker_queue(self, queue: str, priority: int, steps: Sequence[int] = PRIORITY_STEPS) -> str:
        """List: ``queue``'s messages at ``priority`` (kombu keeps one list per priority step)."""
        step = steps[bisect(steps, priority) - 1]
        name = f"{queue}{QUEUE_SEP}{step}" if step else queue
        return f"{self.broker_prefix}{name}"

    def broker_unacked(self) -> str:
        """Hash: delivery tag → message held by a worker (reserved, running or waiting for a countdown)."""
        return f"{self.broker_prefix}unacked"

    def broker_unacked_index(self) -> str:
        """Sorted set: delivery tag → when a worker took the message (seconds)."""
        return f"{self.broker_prefix}unacked_index"

    # -- counters for metrics -----------------------------------------------------------------------
    def counters(self) -> str:
        """Hash: monotonically increasing counters (upstream errors by code, bytes stored, ...)."""
        return f"{self.prefix}:counters"


#: The pool whose quota keys carry no pool name (the only pool before the catalog).
UNNAMED_POOL = "text-to-video"


def _pool_part(pool: str | None) -> str:
    return "" if pool is None or pool == UNNAMED_POOL else f":{pool}"
