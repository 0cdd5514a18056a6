"""Writing new jobs: all of a call's, or none of them.

Every request is validated and the memory its records need is checked against Redis's budget
(:class:`~core.errors.RedisFull`) before anything is written. The records are written first, one
``job_create.lua`` each, ``chunk`` per round trip (plus one to read the existing jobs when a chunk repeats
idempotency keys); the new jobs' messages are pushed only once every record of the call is in, so until
then no worker knows the new jobs and a write Redis refuses part-way is taken back exactly
(``job_discard.lua``). A producer that dies between the records and the messages leaves queued jobs
without a message, which the reconciler re-publishes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Protocol

import redis
from redis.client import Pipeline

from core import tracing
from core.credits import NO_PRINCIPAL, CreditPolicy, day_start, ledger_keys, over_budget_of, to_centi, utc_day
from core.errors import NotReplicated, OverBudget, ValidationError
from core.jobs import MANAGED_FIELDS, TIMESTAMP_PREFIX, Job, JobRequest, JobState, new_job_id
from core.keys import Keys
from core.lua_scripts import ScriptCall, evalsha_pipeline, load_script
from core.memory import MemoryBudget, record_bytes
from core.messages import STEP_WEIGHT, BrokerMessage, created_ms, fair_principal, ready_place, ready_step
from core.replication import ReplicaAcks

log = logging.getLogger("imagineq.jobs")

#: Builds the broker message pushed for a new job record.
MessageFactory = Callable[[Job], BrokerMessage]
#: New jobs' messages per LPUSH (one command per queue and chunk keeps their order).
_PUSH_CHUNK: Final = 500


class JobReads(Protocol):
    def get(self, job_id: str) -> Job | None: ...

    def get_many(self, job_ids: Sequence[str]) -> list[Job | None]: ...


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _new_jobs(items: Sequence[tuple[Job, bool] | OverBudget]) -> list[Job]:
    """The jobs a call wrote (not those an idempotency key named, nor those over budget)."""
    return [item[0] for item in items if not isinstance(item, OverBudget) and item[1]]


class JobCreation:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        reads: JobReads,
        *,
        replica_acks: ReplicaAcks,
        replica_ack_timeout_ms: int,
        refuse_unacknowledged: bool = False,
        memory: MemoryBudget | None,
        weight_of: Callable[[str | None], float] = lambda owner: 1.0,
        release: Callable[[str], object] = lambda parent_id: None,
        credits: CreditPolicy | None = None,
        events_max_len: int = 100_000,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._reads = reads
        self._replica_acks = replica_acks
        self._replica_ack_timeout_ms = replica_ack_timeout_ms
        self._refuse_unacknowledged = refuse_unacknowledged
        self._memory = memory
        self._create = load_script(client, "job_create")
        self._ready_add = load_script(client, "ready_add")
        self._weight_of = weight_of
        self._release = release
        self._discard_script = load_script(client, "job_discard")
        self._credits = credits
        self._events_max_len = events_max_len

    def create_many(
        self,
        requests: Sequence[JobRequest],
        chunk: int = 500,
        *,
        message: MessageFactory | None = None,
        job_ids: Sequence[str] | None = None,
    ) -> list[tuple[Job, bool]]:
        """The jobs of ``requests`` (see the module docstring), each with ``created`` (False: its
        idempotency key named an existing job); ``message(job)``: each new job's broker message;
        ``job_ids``: the ids to give the new jobs, in order (default: fresh ones). A budget without room for
        one of them raises :class:`OverBudget`, none of them written."""
        out: list[tuple[Job, bool]] = []
        for item in self.create_within_budget(requests, chunk, message=message, job_ids=job_ids, partial=False):
            if isinstance(item, OverBudget):
                raise item
            out.append(item)
        return out

    def create_within_budget(
        self,
        requests: Sequence[JobRequest],
        chunk: int = 500,
        *,
        message: MessageFactory | None = None,
        job_ids: Sequence[str] | None = None,
        batch_budget: float | None = None,
        partial: bool = True,
    ) -> list[tuple[Job, bool] | OverBudget]:
        """:meth:`create_many` for the lines of a batch: a request a budget (``batch_budget``, the batch's
        limit, among them) has no room for is an :class:`OverBudget` in its place, and costs nothing; the
        others are written. ``partial`` False: the first one over budget takes every job of the call back."""
        for request in requests:
            request.validate()
            if request.needs_parent:
                raise ValidationError("parent", "must be looked up by a producer, which checks the parent job")
        ids = list(job_ids) if job_ids is not None else [new_job_id() for _ in requests]
        if len(ids) != len(requests):
            raise ValueError(f"{len(ids)} job ids for {len(requests)} requests")
        jobs = [Job.new(request, job_id=job_id) for request, job_id in zip(requests, ids, strict=True)]
        if tracing.enabled():
            for job in jobs:
                job.extra[tracing.TRACE_FIELD] = tracing.new_job_trace(job) or ""
        if self._credits is not None:
            day = utc_day()
            for job in jobs:
                job.estimate = self._credits.estimate(job.model, job.values, job.parent_output)
                job.lday = day
        if self._memory is not None:
            self._memory.check(sum(record_bytes(job) for job in jobs))
        out: list[tuple[Job, bool] | OverBudget] = []
        pushed: dict[str, BrokerMessage] = {}
        wanted = self._replica_acks.wanted()
        try:
            for start in range(0, len(jobs), chunk):
                last = start + chunk >= len(jobs) and message is None
                out += self._create_chunk(
                    jobs[start : start + chunk], replicas=wanted if last else 0, batch_budget=batch_budget
                )
                if not partial and any(isinstance(item, OverBudget) for item in out):
                    break
            new = _new_jobs(out)
            refused = next((item for item in out if isinstance(item, OverBudget)), None)
            if refused is not None and not partial:
                self._discard(new, {})
                return [refused]
            # A job waiting for its parent gets no message and is not ready: its parent's end releases it.
            created = [job for job in new if job.state is JobState.QUEUED]
            if message is not None:
                pushed = {job.id: message(job) for job in created}
                self._push(created, pushed, replicas=wanted)
        except BaseException:
            self._discard(_new_jobs(out), pushed)
            raise
        waiting = [job for job in new if job.state is JobState.WAITING]
        if waiting:
            self._release_ended_parents(waiting)
        return out

    def _release_ended_parents(self, waiting: Sequence[Job]) -> None:
        """A parent that ended between the producer's look and the children's records released no child
        of these (they were not in its children set yet): they are released here. Read after the records
        were written, so either this read or the parent's release sees each child."""
        parents = sorted({str(job.input["parent"]) for job in waiting})
        with self._redis.pipeline(transaction=False) as pipe:
            for parent in parents:
                pipe.hget(self._keys.job(parent), "state")
            states = pipe.execute()
        ended = [
            parent
            for parent, state in zip(parents, states, strict=True)
            if state is None or JobState(_text(state)).terminal
        ]
        for parent in ended:
            self._release(parent)

    def _create_chunk(
        self, jobs: Sequence[Job], *, replicas: int, batch_budget: float | None
    ) -> list[tuple[Job, bool] | OverBudget]:
        calls = [self._create_call(job, batch_budget=batch_budget) for job in jobs]
        results, acks = evalsha_pipeline(self._redis, calls, replicas=replicas, timeout_ms=self._replica_ack_timeout_ms)
        out: list[tuple[Job, bool] | OverBudget | None] = [None] * len(jobs)
        existing: dict[int, str] = {}
        failure: Exception | None = None
        for i, (job, result) in enumerate(zip(jobs, results, strict=True)):
            if isinstance(result, Exception):
                failure = failure or result
            elif int(result[0]) == 1:
                job.created_at = job.updated_at = float(_text(result[2]))
                job.timestamps[job.state.value] = job.created_at
                out[i] = (job, True)
            elif int(result[0]) == 2:
                out[i] = over_budget_of(result, job.estimate or 0.0)
            else:
                existing[i] = _text(result[1])
        if failure is not None:
            # The records this chunk did write go back now; the caller takes back the earlier chunks'.
            self._discard(_new_jobs([item for item in out if item is not None]), {})
            raise failure
        try:
            self._note_acks(jobs, replicas, acks)
        except NotReplicated:
            self._discard(_new_jobs([item for item in out if item is not None]), {})
            raise
        if existing:
            found = self._reads.get_many(list(existing.values()))
            for (i, job_id), job_found in zip(existing.items(), found, strict=True):
                if job_found is None:
                    # The key outlived its record (deleted by hand): take it over.
                    out[i] = self._create_one(jobs[i], stale_id=job_id, batch_budget=batch_budget)
                else:
                    out[i] = (job_found, False)
        return [item for item in out if item is not None]

    def _create_one(self, job: Job, *, stale_id: str, batch_budget: float | None) -> tuple[Job, bool] | OverBudget:
        script, keys, args = self._create_call(job, stale_id=stale_id, batch_budget=batch_budget)
        result = script(keys, args)
        if int(result[0]) == 1:
            job.created_at = job.updated_at = float(_text(result[2]))
            job.timestamps[job.state.value] = job.created_at
            return job, True
        if int(result[0]) == 2:
            return over_budget_of(result, job.estimate or 0.0)
        found = self._reads.get(_text(result[1]))
        if found is None:
            raise RuntimeError(f"idempotency key {job.idempotency_key!r} names a job that keeps vanishing")
        return found, False

    def _create_call(self, job: Job, *, stale_id: str = "", batch_budget: float | None = None) -> ScriptCall:
        keys = [self._keys.job(job.id), self._keys.state_index(job.state.value)]
        if job.idempotency_key is not None:
            keys.append(self._keys.idempotency(job.idempotency_key, job.owner))
        waits = job.state is JobState.WAITING
        if waits:
            keys.append(self._keys.children(str(job.input["parent"])))
        fields = {name: value for name, value in job.to_hash().items() if name not in MANAGED_FIELDS}
        fields.pop(TIMESTAMP_PREFIX + job.state.value, None)
        has_key = "1" if job.idempotency_key is not None else ""
        args: list[str] = [job.id, stale_id, job.state.value, has_key, "1" if waits else ""]
        if self._credits is not None and job.estimate is not None and job.lday is not None:
            keys += [*ledger_keys(self._keys, job.lday, job.batch_id), self._keys.events()]
            args += [
                str(to_centi(job.estimate)),
                str(self._credits.ttl_s),
                job.owner or NO_PRINCIPAL,
                job.model,
                job.batch_id or "",
                job.workflow_id or "",
                *self._credits.budgets(job.owner).limits(batch_budget),
                repr(self._credits.warn),
                str(self._events_max_len),
                job.lday,
                str(day_start(job.lday)),
            ]
            fields.pop("lday", None)  # kept only when the Redis clock's day is another (job_create.lua)
        else:
            args.append("")
        for name, value in fields.items():
            args += [name, value]
        return self._create, keys, args

    def _push(self, jobs: Sequence[Job], messages: Mapping[str, BrokerMessage], *, replicas: int) -> None:
        """Each new job's message, in job order (one LPUSH per queue and chunk keeps the order), then
        ``WAIT`` for ``replicas`` on the same connection: replication is ordered, so they then hold every
        record of the call too."""
        by_queue: dict[str, list[str]] = {}
        by_pool: dict[str, list[Job]] = {}
        for job in jobs:
            by_queue.setdefault(messages[job.id].queue_key, []).append(messages[job.id].payload)
            by_pool.setdefault(job.pool, []).append(job)
        with self._redis.pipeline(transaction=False) as pipe:
            # The jobs become ready with their messages (the submitters' tickets), never before.
            for pool, members in by_pool.items():
                for start in range(0, len(members), _PUSH_CHUNK):
                    self._ready_call(pool, members[start : start + _PUSH_CHUNK], pipe)
            for queue_key, payloads in by_queue.items():
                for start in range(0, len(payloads), _PUSH_CHUNK):
                    pipe.lpush(queue_key, *payloads[start : start + _PUSH_CHUNK])
            if replicas:
                pipe.execute_command("WAIT", replicas, self._replica_ack_timeout_ms)  # type: ignore[no-untyped-call]
            replies = pipe.execute()
        if replicas:
            self._note_acks(jobs, replicas, int(replies[-1]))

    def _ready_call(self, pool: str, jobs: Sequence[Job], pipe: Pipeline) -> None:
        """ready_add.lua for some of a pool's new jobs: their fair-share ranks, in the same step."""
        keys = self._keys
        script_keys = [
            keys.ready(pool),
            keys.ready_meta(pool),
            keys.fair(pool),
            keys.ready_age(pool),
            keys.waiting(),
            keys.dispatch_wakes(),
            *(keys.job(job.id) for job in jobs),
        ]
        args: list[str | float] = [STEP_WEIGHT, len(jobs)]
        for job in jobs:
            principal = fair_principal(job)
            args += [job.id, ready_step(job), principal, self._weight_of(job.owner), created_ms(job), ready_place(job)]
        self._ready_add(keys=script_keys, args=args, client=pipe)

    def _note_acks(self, jobs: Sequence[Job], wanted: int, acks: int) -> None:
        """Too few replicas acknowledged the call's writes: refused (the caller takes every job of the
        call back), or accepted with a warning (``enqueue_unacknowledged``)."""
        if wanted and jobs and acks < wanted:
            if self._refuse_unacknowledged:
                raise NotReplicated(len(jobs), self._replica_ack_timeout_ms)
            # They are on the primary and accepted; only a failover in the next moment could lose them.
            log.warning(
                "%d job(s) accepted without a replica's acknowledgement in %d ms (first %s)",
                len(jobs),
                self._replica_ack_timeout_ms,
                jobs[0].id,
            )

    def _discard(self, jobs: Sequence[Job], pushed: Mapping[str, BrokerMessage]) -> None:
        """Take back jobs this call created (``job_discard.lua``: only while still as created), with the
        messages ``pushed`` for them."""
        if not jobs:
            return
        calls: list[ScriptCall] = []
        for job in jobs:
            sent = pushed.get(job.id)
            keys = [
                self._keys.job(job.id),
                self._keys.state_index(job.state.value),
                sent.queue_key if sent is not None else self._keys.job(job.id),
                self._keys.ready(job.pool),
                self._keys.ready_meta(job.pool),
                self._keys.ready_age(job.pool),
                self._keys.waiting(),
                *ledger_keys(self._keys, job.lday or utc_day(), job.batch_id),
            ]
            if job.idempotency_key is not None:
                keys.append(self._keys.idempotency(job.idempotency_key, job.owner))
            payload = sent.payload if sent is not None else ""
            ttl = str(self._credits.ttl_s if self._credits is not None else 86400)
            calls.append((self._discard_script, keys, [job.id, payload, job.state.value, ttl]))
        evalsha_pipeline(self._redis, calls)
        log.warning("took back %d job(s) of a write that failed part-way (first %s)", len(jobs), jobs[0].id)
