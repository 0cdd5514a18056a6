"""One delivery attempt: breaker, payload, Standard Webhooks signature, a guarded POST, its outcome."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from celery.exceptions import SoftTimeLimitExceeded
from standardwebhooks.webhooks import Webhook
from urllib3.exceptions import ProtocolError

from config.settings import Settings, redact_url
from core import tracing
from core.jobs import Job, JobState
from core.jobstore import JobStore
from core.workflows import WorkflowStore, workflow_summary
from workers.notify.store import Delivery, DeliveryStore
from workers.notify.targets import secret_for, tenant_host_allowed, tenant_policy
from workers.socket_watch import Deadline
from workers.storage.destinations import AddressPolicy, RefusedDestination, guarded_session

log = logging.getLogger("imagineq.notify")
USER_AGENT = "ImagineQ-Webhooks/1"


@dataclass(frozen=True)
class Attempt:
    status: int | None
    latency_ms: float
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Notifier:
    """Sends deliveries for one worker process (one pooled, guarded HTTP session)."""

    def __init__(
        self, settings: Settings, store: DeliveryStore, jobs: JobStore, workflows: WorkflowStore | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs
        self.workflows = workflows
        # The operator's receivers, and one session per tenant (each with its own networks), made on first use.
        self.session = guarded_session(
            AddressPolicy.of(settings.notify.allow_networks), user_agent=USER_AGENT, pool_maxsize=32
        )
        self._tenant_sessions: dict[str, requests.Session] = {}
        self._presigner: Any = None

    def session_for(self, delivery: Delivery) -> requests.Session:
        if delivery.tenant is None:
            return self.session
        session = self._tenant_sessions.get(delivery.tenant)
        if session is None:
            _, networks = tenant_policy(self.settings.principal(delivery.tenant))
            session = guarded_session(networks, user_agent=USER_AGENT, pool_maxsize=8)
            self._tenant_sessions[delivery.tenant] = session
        return session

    def deliver(self, delivery_id: str) -> None:
        delivery = self.store.get(delivery_id)
        if delivery is None or delivery.status != "pending":
            return  # expired, or already done: a redelivered task
        open_until = self.store.breaker_open_until(delivery)
        now_ms = self.store.now_ms()
        if open_until > now_ms:
            if self.store.hold(delivery, open_until, now_ms):
                # Shown once, so a job whose event has not been sent yet says why.
                self._record(delivery, 0, Attempt(None, 0.0, "held: the endpoint keeps failing (breaker open)"))
            return
        secret = secret_for(delivery.ref, delivery.url, self.settings, delivery.tenant)
        if secret is None:
            self._record(delivery, 0, Attempt(None, 0.0, "the endpoint is no longer configured"))
            self.store.finish(delivery, status="failed")
            return
        if delivery.tenant is not None and not tenant_host_allowed(
            delivery.url, self.settings.principal(delivery.tenant)
        ):
            # Checked at enqueue too: this catches a principal whose notify_hosts changed since.
            self._record(delivery, 0, Attempt(None, 0.0, "refused: not one of the principal's notify_hosts"))
            self.store.finish(delivery, status="failed")
            return
        # The attempt ends by its deadline: its lease outlasts it, so no other worker sends it meanwhile.
        attempt_no = self.store.sending(delivery, lease_s=self.settings.notify.attempt_deadline_s + 10)
        try:
            attempt = self._post_traced(delivery, secret, attempt_no)
        except SoftTimeLimitExceeded:
            # Never expected (the deadline is far shorter), but an attempt must always be counted.
            attempt = Attempt(None, 0.0, "the task's time limit ended the attempt")
            self._conclude(delivery, attempt_no, attempt)
            raise
        self._conclude(delivery, attempt_no, attempt)

    def _post_traced(self, delivery: Delivery, secret: str, attempt_no: int) -> Attempt:
        """:meth:`post`, as a span of the job's trace when traces are on (a job's event)."""
        job = self.jobs.get(delivery.job_id) if tracing.enabled() and delivery.job_id else None
        if job is None:
            return self.post(delivery, secret)
        with tracing.job_span("imagineq.webhook", job, event=delivery.type, attempt=attempt_no) as span:
            attempt = self.post(delivery, secret)
            tracing.set_outcome(span, "delivered" if attempt.ok else f"failed: {attempt.status or 'no answer'}")
        return attempt

    def _conclude(self, delivery: Delivery, attempt_no: int, attempt: Attempt) -> None:
        """Record the attempt, tell the breaker, and finish the delivery or schedule its next attempt."""
        self._record(delivery, attempt_no, attempt)
        self.store.endpoint_result(delivery, attempt.ok)
        if attempt.ok:
            self.store.finish(delivery, status="delivered")
            return
        retry_at = self.store.next_attempt_ms(delivery, attempt_no)
        if retry_at is None:
            log.warning(
                "delivery %s to %s given up after %d attempts", delivery.id, redact_url(delivery.url), attempt_no
            )
            self.store.finish(delivery, status="failed")
        else:
            self.store.finish(delivery, status="pending", retry_at_ms=retry_at)

    # -- the request -------------------------------------------------------------------------------
    def post(self, delivery: Delivery, secret: str) -> Attempt:
        body = json.dumps(self.payload(delivery), ensure_ascii=False, separators=(",", ":"))
        message_id = f"evt_{delivery.event}"
        now = datetime.now(tz=UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(message_id, now, body),
        }
        limits = self.settings.notify
        started = time.perf_counter()
        deadline = Deadline(limits.attempt_deadline_s)
        try:
            with (
                deadline,
                self.session_for(delivery).post(
                    delivery.url,
                    data=body.encode(),
                    headers=headers,
                    timeout=(limits.timeout_s, limits.timeout_s),
                    allow_redirects=False,
                    stream=True,
                ) as response,
            ):
                for _ in response.iter_content(chunk_size=8192):  # read (and drop) up to the cap
                    if response.raw.tell() > limits.max_response_bytes:
                        break
                status = response.status_code
        except RefusedDestination as error:
            if delivery.tenant is not None:
                return Attempt(None, _ms(started), "refused before connecting: not a network this principal may reach")
            return Attempt(None, _ms(started), f"refused before connecting: {error}")
        except (requests.RequestException, ProtocolError, OSError) as error:
            if deadline.passed:
                return Attempt(None, _ms(started), f"no complete answer within {limits.attempt_deadline_s:g} s")
            if delivery.tenant is not None:
                # A tenant's receiver: say that it failed, never what was learnt of the network behind it.
                return Attempt(None, _ms(started), "no answer (connection failed or timed out)")
            return Attempt(None, _ms(started), f"{type(error).__name__}: {_short(str(error))}")
        if deadline.passed:  # the answer ended early because the deadline shut it
            return Attempt(None, _ms(started), f"no complete answer within {limits.attempt_deadline_s:g} s")
        latency = _ms(started)
        if 300 <= status < 400:
            return Attempt(status, latency, "redirect not followed")
        return Attempt(status, latency, None if 200 <= status < 300 else f"HTTP {status}")

    def payload(self, delivery: Delivery) -> dict[str, Any]:
        data: dict[str, Any] = {"event_id": delivery.event, "batch_id": delivery.batch_id}
        if delivery.job_id is not None:
            job = self.jobs.get(delivery.job_id)
            data["job"] = job.public_dict() if job is not None else {"id": delivery.job_id}
            if job is not None and self.settings.notify.include_video_url and job.state is JobState.STORED:
                data["video_url"] = self._video_url(job)
        if delivery.workflow_id is not None and self.workflows is not None:
            data["workflow"] = workflow_summary(self.workflows, self.jobs, delivery.workflow_id)
        data.update(delivery.details)
        return {
            "type": delivery.type,
            "timestamp": datetime.fromtimestamp(delivery.at, tz=UTC).isoformat(),
            "data": data,
        }

    def _video_url(self, job: Job) -> str | None:
        if not job.s3_uri:
            return None
        from workers.storage import build_s3_client, presigned_get_url

        if self._presigner is None:
            self._presigner = build_s3_client(self.settings.s3, self.settings.http)
        return presigned_get_url(self._presigner, job.s3_uri, self.settings.notify.video_url_ttl_s)

    def _record(self, delivery: Delivery, attempt_no: int, attempt: Attempt) -> None:
        if delivery.job_id is None:
            return
        self.store.log(
            delivery.job_id,
            {
                "event": delivery.type,
                "event_id": delivery.event,
                "endpoint": delivery.ref,
                "url": redact_url(delivery.url),
                "attempt": attempt_no,
                "status": attempt.status,
                "latency_ms": round(attempt.latency_ms, 1),
                "error": attempt.error,
                "at": time.time(),
            },
        )


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _short(text: str) -> str:
    return text if len(text) <= 200 else text[:199] + "…"
