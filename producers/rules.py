"""What the producers check before they write a job, and what they refuse to do to one."""

from __future__ import annotations

from config.settings import Settings
from core.errors import ImagineQError, ValidationError
from core.jobs import Job, JobRequest
from core.workflows import NODE_KEY_PREFIX
from workers.batch.lines import BATCH_KEY_PREFIX


def check_producer_key(request: JobRequest) -> None:
    """A producer's idempotency key may not have the form of a batch line's (``batch:<id>:line:<n>``):
    it would hand back that line's job, or take its place."""
    if request.idempotency_key is not None and request.idempotency_key.startswith(BATCH_KEY_PREFIX):
        raise ValidationError("idempotency_key", f"must not start with {BATCH_KEY_PREFIX!r} (the keys of batch lines)")
    if request.idempotency_key is not None and request.idempotency_key.startswith(NODE_KEY_PREFIX):
        raise ValidationError(
            "idempotency_key", f"must not start with {NODE_KEY_PREFIX!r} (the keys of workflow nodes)"
        )


class NotCancelable(ImagineQError):
    """The job is past ``queued``: it reached (or is reaching) the upstream, or already ended."""

    def __init__(self, job: Job, message: str) -> None:
        super().__init__(message)
        self.job = job


def check_notify_url_allowed(request: JobRequest, settings: Settings) -> None:
    """A job's own notify_url needs a secret to sign its deliveries with (its principal's, or the
    deployment's), and a principal's may name only that principal's ``notify_hosts``."""
    from workers.notify.targets import check_tenant_notify_url, notify_secret

    if not request.notify_url:
        return
    if notify_secret(request.owner, settings) is None:
        raise ValidationError(
            "notify_url", "needs IMAGINEQ_NOTIFY__SIGNING_SECRET (the secret its deliveries are signed with)"
        )
    principal = settings.principal(request.owner) if request.owner is not None else None
    if principal is not None and not principal.admin:  # an admin's receivers are the operator's
        check_tenant_notify_url(request.notify_url, principal)
