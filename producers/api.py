"""The Python producer API: ``enqueue``, ``enqueue_many``, ``get``, ``wait``.

Validation happens before anything is written; job records are written first (one Redis round trip per
chunk) and their ``submit`` messages published second (one pipelined round trip per chunk, kombu's
``Producer.batch``), both carrying the job id only. ``submit`` links ``chain(poll, store)`` once the
upstream task exists (see ``workers.tasks``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery

from config.settings import Settings, get_settings
from core import tracing
from core.catalog import DEFAULT_MODEL, Catalog
from core.clients import Clients
from core.jobs import Job, JobRequest, Priority, encode_json
from core.messages import BrokerMessage, submit_message
from producers.rules import NotCancelable, check_notify_url_allowed, check_producer_key

if TYPE_CHECKING:
    from core.workflows import Workflow
    from producers.costs import Estimate
    from workers.intake import Intake

#: Jobs written and published per Redis round trip by ``enqueue_many``.
CHUNK = 500


class Producer:
    """Enqueues jobs on one deployment (Redis + Celery broker from ``settings``)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: redis.Redis | None = None,
        app: Celery | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        tracing.setup("producer")  # a no-op unless the OTEL_* variables ask for traces (or already on)
        clients = Clients.build(self.settings, client)
        self.redis, self.keys, self.jobs = clients.redis, clients.keys, clients.jobs
        self.workflows = clients.workflows
        self.catalog = Catalog(self.settings)
        self._app = app
        self._intake: Intake | None = None

    @property
    def app(self) -> Celery:
        """The Celery app of this deployment, for callers that send other tasks (the producer itself
        writes submit messages directly and needs none: built on first use)."""
        if self._app is None:
            from workers.celery import create_app

            self._app = create_app(self.settings)
        return self._app

    def enqueue(
        self,
        prompt: str | None = None,
        *,
        model: str = DEFAULT_MODEL,
        aspect_ratio: str | None = None,
        mode: str | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        priority: Priority | str = Priority.INTERACTIVE,
        notify_url: str | None = None,
        **fields: Any,
    ) -> Job:
        """Validate, write the job, publish its chain. The same idempotency key returns the same job.

        ``model`` names the model of the family (``text-to-video`` by default); ``fields`` are its other
        fields (``duration="10"``, ``resolution="720p"``, ``image=Path("cat.png")`` or bytes or a URL,
        ``parent=job.id``, ...), checked by its declaration (``core.catalog``)."""
        request = JobRequest(
            prompt=prompt,
            aspect_ratio=aspect_ratio,
            mode=mode,
            model=model,
            input=fields,
            metadata=dict(metadata or {}),
            priority=Priority(priority),
            idempotency_key=idempotency_key,
            notify_url=notify_url,
        )
        return self.enqueue_many([request])[0]

    def enqueue_many(self, requests: Iterable[JobRequest | Mapping[str, Any]]) -> list[Job]:
        """Validate every request first (nothing is written if one is bad), then write in chunks.

        Each new job's record and its ``submit`` message are written by one Lua script, ``CHUNK`` jobs
        per Redis round trip; a repeated idempotency key returns the existing job and sends nothing.
        """
        return [job for job, _ in self.enqueue_many_created(requests)]

    def enqueue_many_created(self, requests: Iterable[JobRequest | Mapping[str, Any]]) -> list[tuple[Job, bool]]:
        """:meth:`enqueue_many` with ``created`` per job (False: the idempotency key named an existing job,
        nothing was sent)."""
        return self.enqueue_prepared(self.prepare(requests))

    def prepare(
        self,
        items: Iterable[JobRequest | Mapping[str, Any]],
        *,
        owner: str | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> list[JobRequest]:
        """The requests, each checked once, here: its images stored and its parent looked up
        (``workers.intake``), its fields (``JobRequest.validate``), its model switched on, its idempotency
        key and its notify_url against this deployment's settings; ``owner``: the principal enqueueing
        mappings (set by the web); ``files``: a multipart request's file parts, by name. A
        ValidationError names the item (``requests[i].field``) and carries ``item`` and ``item_field`` for
        callers that point at it otherwise."""
        return [self._prepared(index, item, owner, files or {}) for index, item in enumerate(items)]

    @property
    def intake(self) -> Intake:
        if self._intake is None:
            from workers.intake import Intake
            from workers.storage import build_s3_client

            s3, http = self.settings.s3, self.settings.http
            self._intake = Intake(self.settings, self.jobs.get, lambda: build_s3_client(s3, http))
        return self._intake

    def enqueue_prepared(
        self, requests: Sequence[JobRequest], *, job_ids: Sequence[str] | None = None
    ) -> list[tuple[Job, bool]]:
        """Write requests that went through :meth:`prepare`; ``job_ids``: the ids the new jobs get, in
        order (chosen before, e.g. to count them against a principal's limits first)."""
        return self.jobs.create_many(requests, chunk=CHUNK, message=self._message, job_ids=job_ids)

    def _message(self, job: Job) -> BrokerMessage:
        return submit_message(job, keys=self.keys)

    def publish(self, job: Job) -> None:
        """(Re-)publish a job's chain, e.g. for an operator resubmit or the reconciler."""
        self._publish([job])

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def wait(self, job_id: str, timeout: float, *, interval_s: float = 0.25) -> Job:
        """Block until the job is terminal; TimeoutError (with its last state) after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.jobs.get(job_id)
            if job is None:
                raise KeyError(f"job {job_id} not found")
            if job.state.terminal:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.state.value} after {timeout:.0f}s")
            time.sleep(interval_s)

    def estimate(self, items: Iterable[Mapping[str, Any]], *, owner: str | None = None) -> Estimate:
        """What these requests would cost (each one's credits, the total) and the budgets they would meet
        (``owner``'s, today); nothing is written. See :mod:`producers.costs`."""
        from producers.costs import Estimator

        return Estimator(self).requests(list(items), owner=owner)

    def submit_workflow(self, body: Mapping[str, Any], *, owner: str | None = None) -> tuple[Workflow, bool]:
        """Create the workflow ``body`` describes (``{"nodes": [...], "idempotency_key": ...}``: each node a
        job request with a ``name``, whose ``parent`` may name another node); with whether this call
        created it. See :mod:`producers.workflows`."""
        from producers.workflows import submit_workflow

        return submit_workflow(self, body, owner=owner)

    def workflow(self, workflow_id: str) -> dict[str, Any] | None:
        """The workflow with its state and each node's (job id, model, state, outputs), or None."""
        from core.workflows import workflow_summary

        if self.workflows.get(workflow_id) is None:
            return None
        return workflow_summary(self.workflows, self.jobs, workflow_id)

    def cancel_workflow(self, workflow_id: str, *, by: str) -> list[str]:
        """Cancel every node of the workflow not yet submitted; the job ids canceled (KeyError: no such
        workflow)."""
        from producers.workflows import cancel_workflow

        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            raise KeyError(f"workflow {workflow_id} not found")
        return cancel_workflow(self, workflow, by=by)

    def cancel(self, job_id: str, *, by: str) -> Job:
        """Cancel a queued job, or one waiting for its parent (``by`` says where from, in its error); the
        job as it is now. Raises NotCancelable (its message says why) when it is already past ``queued``."""
        from core.jobs import JobState

        fields = {"reason": "canceled", "error": f"canceled {by}"}
        self.jobs.transition(job_id, JobState.CANCELED, expect={JobState.QUEUED, JobState.WAITING}, fields=fields)
        job = self.jobs.get(job_id)
        if job is None:
            raise KeyError(f"job {job_id} not found")
        if job.state is JobState.CANCELED:
            return job
        if job.state.terminal:
            raise NotCancelable(job, f"job {job.id} is already {job.state.value}")
        what = "is being submitted" if job.state is JobState.SUBMITTING else "has reached the upstream"
        raise NotCancelable(job, f"job {job.id} is {job.state.value}: it {what} and can no longer be canceled")

    def resubmit(self, job: Job) -> Job:
        """Queue a failed job again (a new upstream task, its own quota slot); ValueError when it is not
        failed, or changed state meanwhile."""
        from core.jobs import JobState

        if job.state is not JobState.FAILED:
            raise ValueError(f"job {job.id} is {job.state.value}; only failed jobs can be resubmitted")
        if not job.resubmittable:
            raise ValueError(
                f"job {job.id} failed {job.reason}{f' ({job.fail_code})' if job.fail_code else ''}: a new attempt "
                "would fail the same way; change the request and submit a new job"
            )
        # The new attempt's credits are reserved first, under the budgets (OverBudget: nothing changed).
        self.jobs.reserve_attempt(job)
        if job.reason == "outcome_unknown" and job.account:
            # Its first task may still run upstream: that slot stays taken on its own, and this attempt
            # takes (and logs) a slot and a creation of its own.
            from core.quota import QuotaLimiter

            QuotaLimiter.for_settings(self.redis, self.keys, self.settings).detach_hold(
                job.account, job.id, pool=job.pool
            )
        cleared: dict[str, str | None] = dict.fromkeys(
            (
                *("reason", "error", "task_id", "account", "create_sent_at", "submit_attempts"),
                *("result_url", "result_urls", "outputs", "s3_uri", "size", "sha256", "store_started_at"),
                *("fail_code", "fail_msg"),
            )
        )
        # The attempt that failed is kept: its reason, its upstream task and when it entered each state.
        attempt = {
            "reason": job.reason,
            "error": job.error,
            "fail_code": job.fail_code,
            "task_id": job.task_id,
            "account": job.account,
            "charged": job.charged,
            "timestamps": dict(job.timestamps),
        }
        cleared["history"] = encode_json([*job.history, {k: v for k, v in attempt.items() if v}])
        if not self.jobs.transition(job.id, JobState.QUEUED, expect=JobState.FAILED, fields=cleared):
            raise ValueError(f"job {job.id} changed state meanwhile; look again")
        queued = self.jobs.get(job.id)
        assert queued is not None
        self.publish(queued)
        return queued

    def download(self, job: Job, target: Path, *, index: int = 0) -> str:
        """Write output ``index`` of a stored job to ``target`` and return its sha256. It is written beside
        the target and renamed once whole and checked against the output's sha256, so a failed download
        leaves no half file; ValueError when the job has no such output or the bytes do not match."""
        from core.jobs import JobState
        from workers.storage import build_s3_client

        if job.state is not JobState.STORED or not job.outputs:
            raise ValueError(f"job {job.id} is {job.state.value}: only a stored job has outputs")
        output = next((o for o in job.outputs if o.get("index") == index), None)
        if output is None:
            raise ValueError(f"job {job.id} has {len(job.outputs)} output(s); there is no output {index}")
        uri, expected = str(output["uri"]), output.get("sha256")
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        body = build_s3_client(self.settings.s3, self.settings.http).get_object(Bucket=bucket, Key=key)["Body"]
        partial = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        try:
            with partial.open("wb") as out:
                for chunk in body.iter_chunks(1024 * 1024):
                    digest.update(chunk)
                    out.write(chunk)
            if expected and digest.hexdigest() != expected:
                raise ValueError(f"{uri} does not match the output's sha256; nothing written")
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return digest.hexdigest()

    def close(self) -> None:
        self.redis.close()

    def _prepared(
        self, index: int, item: JobRequest | Mapping[str, Any], owner: str | None, files: Mapping[str, bytes]
    ) -> JobRequest:
        from core.errors import ValidationError

        try:
            if isinstance(item, JobRequest):
                values = self.intake.values(item.spec, item.input, owner=item.owner, files=files)
                request = dataclasses.replace(item, input=values) if values != item.input else item
                request.validate()
            elif not isinstance(item, Mapping):
                raise ValidationError("request", f"must be an object (got {type(item).__name__})")
            else:
                values = self.intake.item(item, owner=owner, files=files)
                request = JobRequest.from_mapping(values, **({"owner": owner} if owner is not None else {}))
            request = self.intake.with_parent(request)
            self.catalog.spec(request.model)  # switched off on this deployment: refused by name
            check_producer_key(request)
            check_notify_url_allowed(request, self.settings)
        except ValidationError as error:
            if index or not isinstance(item, JobRequest):
                raise ValidationError(
                    f"requests[{index}].{error.field}", error.message, item=index, item_field=error.field
                ) from None
            raise
        return request

    def _publish(self, jobs: Sequence[Job]) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                message = self._message(job)
                pipe.lpush(message.queue_key, message.payload)
            pipe.execute()


_default: Producer | None = None


def default_producer() -> Producer:
    global _default
    if _default is None:
        _default = Producer()
    return _default


def enqueue(prompt: str | None = None, **options: Any) -> Job:
    return default_producer().enqueue(prompt, **options)


def enqueue_many(requests: Iterable[JobRequest | Mapping[str, Any]]) -> list[Job]:
    return default_producer().enqueue_many(requests)


def get(job_id: str) -> Job | None:
    return default_producer().get(job_id)


def wait(job_id: str, timeout: float) -> Job:
    return default_producer().wait(job_id, timeout)
