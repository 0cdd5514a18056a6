"""The job records in Redis, and the one compare-and-set every state change goes through.

Layout (keys from :class:`~core.keys.Keys`): a hash per job (field names in :mod:`core.jobs`), a
sorted set per state (member = job id, score = ms the job entered it), ``task_index`` (upstream taskId →
job id) and ``idempotency`` (producer key → job id). Every write is one Lua script in ``core/lua/``:
``job_create``, ``job_discard`` (taking back a call's new jobs), ``job_transition`` (state CAS),
``job_update`` (field CAS) and ``job_incr``.

Expiry: a terminal job's hash and idempotency key expire after ``terminal_ttl_s``; leaving a terminal state
(``failed → queued|downloading``) removes the expiry again. Task index keys always carry an expiry of
``terminal_ttl_s`` plus a day from when the task id was written — far longer than a task stays in progress —
so a replaced task id never leaks a key. State index entries are trimmed by :meth:`JobStore.cleanup_indexes`.

The client may decode responses or not; both are handled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, cast

import redis
from redis.client import Pipeline
from redis.commands.core import Script

from core.credits import CreditPolicy, ledger_keys, reserve_attempt, to_centi, utc_day
from core.errors import OverBudget
from core.job_creation import JobCreation, MessageFactory
from core.job_indexes import StateIndexes
from core.jobs import (
    Job,
    JobRequest,
    JobState,
    allowed_from,
)
from core.jobstore_args import (
    FieldValue,
    check_writable,
    field_args,
    optional_text,
    states_of,
    text,
    update_args,
)
from core.keys import Keys
from core.lua_scripts import evalsha_pipeline, load_script
from core.memory import MemoryBudget
from core.messages import created_ms, fair_principal, ready_place, ready_rank, ready_step
from core.release import Released, release_children
from core.replication import ReplicaAcks

log = logging.getLogger("imagineq.jobs")


#: A job a submitter took from its ready set is moved out of queued within moments; one still queued this
#: long after lost its submitter.
DISPATCH_GRACE_S: Final = 30.0
#: Extra life of a task index key beyond the terminal TTL (it is written before the job turns terminal).
TASK_INDEX_SLACK_S: Final = 86400


#: What job_transition.lua's ready block is given for a job leaving the ready set (it reads what it
#: removes from the set's own entry; these describe a job entering it).
LEAVING_READY_ARGS: Final = ("", "", "0", "0", "")


class JobStore(StateIndexes):
    """Create, read and move jobs; all writes are atomic Lua scripts timed by the Redis clock."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        terminal_ttl_s: int = 30 * 86400,
        events_max_len: int = 100_000,
        replica_acks: int = 0,
        replica_ack_timeout_ms: int = 0,
        refuse_unacknowledged: bool = False,
        memory_budget_pct: float | None = None,
        weight_of: Callable[[str | None], float] | None = None,
        parent_max_age_s: float = 14 * 86400,
        credits: CreditPolicy | None = None,
    ) -> None:
        """``memory_budget_pct``: new jobs must fit under this share of Redis's ``maxmemory``
        (:mod:`core.memory`); None: no check. ``weight_of(owner)``: a principal's fair-share weight
        (default 1 for all). ``parent_max_age_s``: how old a stored parent may be when it releases its
        waiting children (:mod:`core.release`). ``credits``: each new job's estimate, reserved in the ledger
        under its budgets, and moved with its state (:mod:`core.credits`); None: no credits kept."""
        if terminal_ttl_s < 1:
            raise ValueError("terminal_ttl_s must be at least 1")
        self._client = client
        self._keys = keys
        self.terminal_ttl_s = terminal_ttl_s
        self.events_max_len = events_max_len
        self.parent_max_age_s = parent_max_age_s
        #: New jobs wait for these replicas (``core.replication``) before create returns them.
        self._replica_acks = ReplicaAcks(client, replica_acks if replica_ack_timeout_ms else 0)
        self._replica_ack_timeout_ms = replica_ack_timeout_ms
        self._creation = JobCreation(
            client,
            keys,
            self,
            replica_acks=self._replica_acks,
            replica_ack_timeout_ms=replica_ack_timeout_ms,
            refuse_unacknowledged=refuse_unacknowledged,
            memory=MemoryBudget(client, memory_budget_pct) if memory_budget_pct else None,
            **({"weight_of": weight_of} if weight_of is not None else {}),
            release=self.release_children,
            credits=credits,
            events_max_len=events_max_len,
        )
        self.credits = credits
        self._transition = load_script(client, "job_transition")
        self._ready = load_script(client, "job_ready")
        self._update = load_script(client, "job_update")
        self._incr = load_script(client, "job_incr")
        self._read = load_script(client, "job_read")

    # -- create -------------------------------------------------------------------------------------
    def create(self, request: JobRequest, *, message: MessageFactory | None = None) -> tuple[Job, bool]:
        """Write a queued job; ``created`` is False when the idempotency key already named a job."""
        return self.create_many([request], message=message)[0]

    def create_many(
        self,
        requests: Sequence[JobRequest],
        chunk: int = 500,
        *,
        message: MessageFactory | None = None,
        job_ids: Sequence[str] | None = None,
    ) -> list[tuple[Job, bool]]:
        """Like :meth:`create` for many requests, all of them or none (:class:`core.job_creation.JobCreation`):
        ``created`` is False for a request whose idempotency key already named a job."""
        return self._creation.create_many(requests, chunk=chunk, message=message, job_ids=job_ids)

    def create_within_budget(
        self,
        requests: Sequence[JobRequest],
        chunk: int = 500,
        *,
        message: MessageFactory | None = None,
        batch_budget: float | None = None,
    ) -> list[tuple[Job, bool] | OverBudget]:
        """:meth:`create_many` for a batch's lines: those over a budget are an :class:`OverBudget` in their
        place, the others written (:meth:`core.job_creation.JobCreation.create_within_budget`)."""
        return self._creation.create_within_budget(requests, chunk, message=message, batch_budget=batch_budget)

    def reserve_attempt(self, job: Job) -> None:
        """Reserve a failed job's next attempt under its budgets before it is queued again (a resubmit):
        :func:`core.credits.reserve_attempt`."""
        if self.credits is not None:
            reserve_attempt(self._client, self._keys, self.credits, job, events_max_len=self.events_max_len)

    def release_children(self, parent_id: str) -> Released:
        """The jobs waiting for ``parent_id`` move on now that it ended (:func:`core.release.release_children`)."""
        return release_children(self, self._client, self._keys, parent_id)

    # -- read ---------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        data = cast("dict[Any, Any]", self._client.hgetall(self._keys.job(job_id)))
        return Job.from_hash(data) if data else None

    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]:
        """The jobs in order (None where missing), in one round trip."""
        with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self._keys.job(job_id))
            rows = pipe.execute()
        return [Job.from_hash(row) if row else None for row in rows]

    def get_many_matching(
        self, job_ids: Sequence[str], *, batch: str | None = None, owner: str | None = None
    ) -> list[Job | None]:
        """:meth:`get_many`, but only the jobs of ``batch`` and/or ``owner`` are read whole (None for
        the others): a filter that matches little reads two short fields per job, not every record."""
        if batch is None and owner is None:
            return self.get_many(job_ids)
        with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self._keys.job(job_id), ["batch_id", "owner"])
            rows = pipe.execute()
        wanted = [
            (batch is None or optional_text(row[0]) == batch) and (owner is None or optional_text(row[1]) == owner)
            for row in rows
        ]
        found = iter(self.get_many([job_id for job_id, keep in zip(job_ids, wanted, strict=True) if keep]))
        return [next(found) if keep else None for keep in wanted]

    def by_task_id(self, task_id: str) -> Job | None:
        """The job the upstream task belongs to (its ``task_id`` may since have moved on to a new task)."""
        job_id = cast("str | bytes | None", self._client.get(self._keys.task_index(task_id)))
        return self.get(text(job_id)) if job_id is not None else None

    # -- write --------------------------------------------------------------------------------------
    def transition(
        self,
        job_id: str,
        to: JobState,
        *,
        expect: JobState | Iterable[JobState] | None = None,
        fields: Mapping[str, FieldValue] | None = None,
        incr: Mapping[str, int] | None = None,
        pipe: Pipeline | None = None,
        read: Job | None = None,
        ready: bool = True,
        charge: bool = False,
        upstream_credits: float | None = None,
    ) -> bool:
        """Move the job to ``to`` if its state is in ``expect`` (when given) and ``to`` is allowed from it.

        A job entering ``queued`` enters its pool's ready set too, where submitters take jobs from, unless
        ``ready`` is False (it waits out a delay; its own message puts it back); one leaving ``queued``
        leaves it.

        ``fields`` are written in the same step (None or '' deletes), ``incr`` counters added; a
        ``task_id`` field also writes the task index. Entering ``submitting`` counts one ``attempts``.
        Returns False, having written nothing, when the job is missing or the move is refused.

        With ``pipe`` exactly one script call is queued there (even for a move refused up front) and the
        pipeline's result for it is 1 or 0; this call then returns True.

        A move into a terminal state, or one that may leave a terminal state, first reads the job's
        idempotency key (one extra round trip) so the key's expiry follows the job's; passing ``expect``
        keeps moves such as ``submitting → queued`` to a single round trip, and so does ``read``: the
        record the caller has read, whose idempotency key (set at creation, never changed) is used.

        Credits move in the same step (:mod:`core.credits`): the estimate is charged on entering
        ``generating`` (or on any move with ``charge``: createTask's outcome unknown), released on a terminal
        move of a job never charged, and a charge settled on ``upstream_credits`` (the upstream's figure).
        """
        sources = self._sources(to, expect)
        if not sources and pipe is None:
            return False
        keys, args = self._transition_call(job_id, to, sources, fields, incr, read, ready, charge, upstream_credits)
        if pipe is not None:
            self._transition(keys, args, client=pipe)
            return True
        return bool(self._transition(keys, args))

    def claim(
        self, job_id: str, *, pool: str, fields: Mapping[str, FieldValue], acknowledge: bool
    ) -> tuple[Job | None, bool | None]:
        """Read the job and move it from ``queued`` to ``submitting`` with ``fields``, in one round trip (with
        ``acknowledge``, ``WAIT`` for the replicas in it too): the record (None when missing), and True when
        moved (and acknowledged), False when not moved, None when moved but no replica acknowledged it in
        time; replication offsets are global, so the acknowledgement covers every write made before the move,
        on any connection (the slot taken just before it). The record is read just before the move, or just
        after it when Redis had to be given the read's script again (a restart, a failover): what the move
        changes (state, ``fields``, attempts) is not what a caller may rely on it for."""
        sources = self._sources(JobState.SUBMITTING, JobState.QUEUED)
        keys, args = self._transition_call(
            job_id, JobState.SUBMITTING, sources, fields, None, None, True, False, None, pool=pool
        )
        wanted = self._replica_acks.wanted() if acknowledge else 0
        (record, moved), acks = evalsha_pipeline(
            self._client,
            [(self._read, [self._keys.job(job_id)], []), (self._transition, keys, args)],
            replicas=wanted,
            timeout_ms=self._replica_ack_timeout_ms,
        )
        for result in (record, moved):
            if isinstance(result, Exception):
                raise result
        pairs = list(record or [])
        job = Job.from_hash(dict(zip(pairs[::2], pairs[1::2], strict=True))) if pairs else None
        if not moved:
            return job, False
        return job, True if acks >= wanted else None

    @staticmethod
    def _sources(to: JobState, expect: JobState | Iterable[JobState] | None) -> set[JobState]:
        """The states a move to ``to`` may start from, narrowed to ``expect``."""
        sources = set(allowed_from(to))
        wanted = states_of(expect)
        if wanted is not None:
            sources &= wanted
        return sources

    def _transition_call(
        self,
        job_id: str,
        to: JobState,
        sources: set[JobState],
        fields: Mapping[str, FieldValue] | None,
        incr: Mapping[str, int] | None,
        read: Job | None,
        ready: bool,
        charge: bool,
        upstream_credits: float | None,
        *,
        pool: str | None = None,
    ) -> tuple[list[str], list[str]]:
        """The transition script's keys and arguments (see :meth:`transition`). ``pool``: the pool of a job
        leaving ``queued`` whose record is not in hand (the script reads what it removes from the ready
        set's own entry; the ready arguments only describe a job entering it)."""
        fields = dict(fields or {})
        incr = dict(incr or {})
        if to is JobState.SUBMITTING:
            incr["attempts"] = incr.get("attempts", 0) + 1
        froms = sorted(sources, key=lambda state: state.value)
        keys = [self._keys.job(job_id), self._keys.state_index(to.value)]
        keys += [self._keys.state_index(state.value) for state in froms]
        idem = ""
        moves_credits = self.credits is not None and (
            to is JobState.GENERATING or to.terminal or charge or upstream_credits is not None
        )
        lday = batch_id = account = None
        if to.terminal or any(state.terminal for state in froms) or moves_credits:
            owner: str | None
            if read is not None and read.id == job_id and not moves_credits:
                idem, owner = read.idempotency_key or "", read.owner
            else:
                # The account is read from the record even when the caller has one: it is set on the way.
                fields_read = ["idempotency_key", "owner", "lday", "batch_id", "account", "created_at"]
                stored = cast("list[str | bytes | None]", self._client.hmget(self._keys.job(job_id), fields_read))
                idem, owner, lday, batch_id, account, created = (text(value) if value else None for value in stored)  # type: ignore[assignment]
                idem = idem or ""
                if lday is None and created is not None:  # its ledger day is the day it was created
                    lday = utc_day(float(created))
            if idem and (to.terminal or any(state.terminal for state in froms)):
                keys.append(self._keys.idempotency(idem, owner))
            elif idem:
                idem = ""
        task_id = fields.get("task_id")
        if task_id is not None and task_id != "":
            keys.append(self._keys.task_index(str(task_id)))
        args: list[str] = [
            job_id,
            to.value,
            str(self.terminal_ttl_s if to.terminal else 0),
            str(self.terminal_ttl_s + TASK_INDEX_SLACK_S),
            idem,
            str(len(froms)),
            *(state.value for state in froms),
            *field_args(fields, incr),
        ]
        # the job's end is recorded in the events stream, in the same step
        args += ["1", str(self.events_max_len)] if to.terminal else ["0"]
        job = None
        if pool is not None and to is not JobState.QUEUED and JobState.QUEUED in sources:
            keys += self._ready_keys_of(pool)
            args += ["1", "", *LEAVING_READY_ARGS]
        else:
            if to is JobState.QUEUED or JobState.QUEUED in sources:
                # Entering or leaving queued moves the job into or out of its pool's ready set (a job that
                # is missing is refused by the script).
                job = read if read is not None and read.id == job_id else self.get(job_id)
            if job is not None:
                keys += self._ready_keys(job)
                entering = "1" if to is JobState.QUEUED and ready else ""
                args += ["1", entering, *self._ready_args(job)]
            else:
                args.append("0")
        if moves_credits and lday is not None and self.credits is not None:
            keys += ledger_keys(self._keys, lday, batch_id)
            if account:
                keys += [self._keys.balance(account), self._keys.balance_holds(account)]
            else:
                keys += keys[-2:]  # never touched: the job has no account
            figure = "" if upstream_credits is None else str(to_centi(upstream_credits))
            args += ["1", "1" if charge else "", figure, str(self.credits.ttl_s), account or ""]
        else:
            args.append("0")
        if to.terminal:
            keys.append(self._keys.events())
        return keys, args

    def update(
        self,
        job_id: str,
        *,
        expect: JobState | Iterable[JobState],
        fields: Mapping[str, FieldValue] | None = None,
        incr: Mapping[str, int] | None = None,
        pipe: Pipeline | None = None,
    ) -> bool:
        """Write ``fields`` (None or '' deletes) and add ``incr`` if the job's state is in ``expect``.

        Not for ``task_id`` (use :meth:`transition`, which keeps the task index). Returns False, having
        written nothing, when the job is missing or in another state. ``pipe`` as in :meth:`transition`.
        """
        args = update_args(expect, fields or {}, incr or {})
        keys = [self._keys.job(job_id)]
        if pipe is not None:
            self._update(keys, args, client=pipe)
            return True
        return bool(self._update(keys, args))

    def update_acknowledged(
        self, job_id: str, *, expect: JobState | Iterable[JobState], fields: Mapping[str, FieldValue]
    ) -> bool | None:
        """:meth:`update`, then ``WAIT`` for the replicas new jobs wait for (on the same connection):
        True when written and acknowledged, False when not written (missing job, another state), None
        when written but no replica acknowledged it in time (a failover could still forget it)."""
        args = update_args(expect, fields, {})
        return self._acknowledged(self._update, [self._keys.job(job_id)], args)

    def _acknowledged(self, script: Script, keys: list[str], args: list[Any]) -> bool | None:
        """Run ``script`` then ``WAIT`` in one round trip: True when it wrote and a replica acknowledged,
        False when it wrote nothing, None when written but unacknowledged in time."""
        wanted = self._replica_acks.wanted()
        (written,), acks = evalsha_pipeline(
            self._client, [(script, keys, args)], replicas=wanted, timeout_ms=self._replica_ack_timeout_ms
        )
        if isinstance(written, Exception):
            raise written
        if not written:
            return False
        return True if acks >= wanted else None

    @property
    def replica_acks(self) -> ReplicaAcks:
        """The replicas a write relied on must reach (none when ``replica_ack_timeout_ms`` is 0: ``WAIT`` with
        timeout 0 would block until they answer)."""
        return self._replica_acks

    @property
    def replica_ack_timeout_ms(self) -> int:
        return self._replica_ack_timeout_ms

    def make_ready(self, job: Job, *, taken_grace_s: float = DISPATCH_GRACE_S, accounts: Sequence[str] = ()) -> bool:
        """Put the queued ``job`` back in its pool's ready set when it is not there and no submitter took it
        from there in the last ``taken_grace_s`` (``job_ready.lua``); True when it was put back. A take
        whose submitter vanished before claiming the job gives back the quota it took on ``accounts``."""
        keys = self._keys
        quota: list[str] = [keys.creation_log()] if accounts else []
        for name in accounts:
            quota += [
                keys.creations(name, job.pool),
                keys.leases(name, job.pool),
                keys.lease_owners(name, job.pool),
                keys.create_requests(name),
                keys.balance_holds(name),
            ]
        return bool(
            self._ready(
                keys=[
                    keys.job(job.id),
                    keys.ready(job.pool),
                    keys.dispatched(),
                    keys.ready_meta(job.pool),
                    keys.dispatch_wakes(),
                    keys.ready_age(job.pool),
                    keys.waiting(),
                    *quota,
                ],
                args=[job.id, *self._ready_args(job), round(taken_grace_s * 1000), len(accounts)],
            )
        )

    def _ready_keys(self, job: Job) -> list[str]:
        """The keys job_transition.lua's ready block reads, in its order."""
        return self._ready_keys_of(job.pool)

    def _ready_keys_of(self, pool: str) -> list[str]:
        keys = self._keys
        return [
            keys.ready(pool),
            keys.dispatch_wakes(),
            keys.ready_meta(pool),
            keys.dispatched(),
            keys.ready_age(pool),
            keys.waiting(),
        ]

    @staticmethod
    def _ready_args(job: Job) -> list[str]:
        """What the ready set keeps of a job: its rank (when the record has none), principal, step, created
        ms and place (pin and estimate)."""
        return [ready_rank(job), fair_principal(job), str(ready_step(job)), created_ms(job), ready_place(job)]

    def incr(self, job_id: str, field: str, by: int = 1) -> int:
        """Add ``by`` to a counter on the record and return the new value; LookupError if no such job."""
        check_writable({field: by})
        value = self._incr([self._keys.job(job_id)], [field, by])
        if value is None:
            raise LookupError(f"job {job_id} does not exist")
        return int(value)
