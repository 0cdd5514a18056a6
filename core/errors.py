"""The one error tree of ImagineQ: every error it raises on purpose, drawn whole here (each class lives
with the code that raises it; the module is named where it is not this one).

::

    ImagineQError (config.errors)
    ├── ConfigError (config.errors)              invalid settings: every bad field named, before anything runs
    ├── ValidationError(field, message)          bad user input; nothing was sent or written
    ├── RedisFull(used, budget, wanted)          Redis is near its maxmemory: new jobs refused, nothing written
    ├── OverBudget(budget, limit, charged, …)    a budget has no room for a job's estimate: nothing written
    ├── UpstreamError                            status, code, endpoint, request_id, body (≤ 500 chars)
    │   ├── RetryableError(retry_after_s)        try again later; the job is not failed
    │   │   ├── RateLimited                      429 (the whole account cools down)
    │   │   ├── Unavailable                      500, other 5xx, 408 outside recordInfo
    │   │   │   └── Maintenance                  455 (the whole account cools down)
    │   │   ├── TransportError                   not sent (connect failure/timeout), or a garbled answer
    │   │   └── OutcomeUnknown                   createTask sent, no answer: the task may exist upstream
    │   ├── FatalError                           this job fails with ``reason``
    │   │   ├── Rejected                         422, and any other 4xx
    │   │   ├── NotFound                         404
    │   │   ├── GenerationFailed                 501
    │   │   └── ResultTimeout                    408 from recordInfo: no result for > 10 min
    │   └── AccountError                         the account pauses; the job waits (is not failed)
    │       ├── Unauthorized                     401, 403 (incl. Cloudflare "error code: 1010")
    │       ├── NoCredits                        402
    │       ├── KeyCapExceeded                   433
    │       └── FeatureDisabled                  505
    ├── StorageError (workers.storage.errors)    url (no query string), status; fatal unless said otherwise
    │   ├── ResultGone                           403/404/410 even after one refresh → job ``expired``
    │   ├── ResultTooLarge                       announced or streamed bytes > ``s3.max_download_bytes``
    │   ├── BadResult                            not http(s), not a video, unexpected status; retryable
    │   │                                        only for a body length ≠ Content-Length
    │   └── TransferError                        network or S3 failure (retryable); every boto error
    ├── StreamError (workers.streams)            a stream broke a promise; translated into a StorageError
    │   ├── TooManyBytes                         more than the cap arrived
    │   ├── LengthMismatch                       fewer or more bytes than announced
    │   └── TransferTooSlow (…storage.deadline)  below the minimum throughput, or past a deadline
    ├── RefusedDestination (…storage.destinations)  an address results and webhooks may not reach
    ├── InputError (workers.inputs)              a job's image or parent cannot be used at submit time
    ├── BatchBusy (workers.batch.store)          another process is reading this batch
    ├── LocationError (workers.batch.locations)  a batch file or folder cannot be read, written or moved
    ├── NotCancelable (producers.api)            the job is past queued
    └── CallbackRejected (producers.web.callbacks)   an upstream callback refused; its outcome says the status

Tasks decide from the class alone: ``retryable`` is true exactly for ``RetryableError`` (and the
retryable storage errors), and ``cools_down_account`` for the two that hold every submitter of the
account back; an ``AccountError`` is neither retried on the same account nor a job failure — the caller
pauses the account and re-queues the job. ``reason`` is a stable snake_case code for job records and
metrics. The upstream's answers are read into this tree in one place, ``workers.upstream.answers``; boto's
errors in one place too, ``workers.storage.client.s3_errors``.
"""

from __future__ import annotations

from typing import ClassVar, Final

# The root lives below every layer (so the settings' error is in the tree too); it is read from here.
from config.errors import ConfigError as ConfigError
from config.errors import ImagineQError as ImagineQError

#: Longest body (and message) kept on an error.
BODY_MAX_CHARS: Final = 500


class ValidationError(ImagineQError):
    """Bad user input, refused before anything is sent; ``str()`` names the field and the limit."""

    _reason = "invalid_request"

    def __init__(self, field: str, message: str, *, item: int | None = None, item_field: str | None = None) -> None:
        """``item``: the index of the bad request in a list, ``item_field`` the field within it (``field``
        then reads ``requests[i].<item_field>``)."""
        super().__init__(field, message)
        self.field = field
        self.message = message
        self.item = item
        self.item_field = item_field if item_field is not None else field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class RedisFull(ImagineQError):
    """Redis is past its memory budget: new jobs are refused (nothing was written) until finished jobs'
    records expire or the operator gives Redis more memory. The work already accepted goes on."""

    _reason = "redis_full"
    #: A client may try again after about this long (records expire, jobs finish).
    retry_after_s: ClassVar[int] = 30

    def __init__(self, used_bytes: int, budget_bytes: int, wanted_bytes: int) -> None:
        super().__init__(used_bytes, budget_bytes, wanted_bytes)
        self.used_bytes = used_bytes
        self.budget_bytes = budget_bytes
        self.wanted_bytes = wanted_bytes

    def __str__(self) -> str:
        mb = 1024 * 1024
        return (
            f"Redis is full for new jobs: {self.used_bytes / mb:.1f} MB used, these jobs need about "
            f"{self.wanted_bytes / mb:.1f} MB more, and new jobs may use at most {self.budget_bytes / mb:.1f} MB "
            "(redis_memory_budget_pct of maxmemory); nothing was written, try again later"
        )


class NotReplicated(ImagineQError):
    """No Redis replica acknowledged new jobs in time: they were taken back and not accepted, since a
    failover in the next moment would forget them (the primary may be cut off from its replicas, and a
    replica promoted in its place). Retryable: with the same idempotency keys a job that did get through
    is returned, never created twice."""

    _reason = "not_replicated"
    retry_after_s: ClassVar[int] = 2

    def __init__(self, jobs: int, timeout_ms: int) -> None:
        super().__init__(jobs, timeout_ms)
        self.jobs = jobs
        self.timeout_ms = timeout_ms

    def __str__(self) -> str:
        return (
            f"no Redis replica acknowledged {self.jobs} new job(s) within {self.timeout_ms} ms "
            "(enqueue_replica_ack_timeout_ms): they were not accepted; try again (with the same idempotency "
            "keys, a job that did get through is returned, not created twice)"
        )


class OverBudget(ImagineQError):
    """A budget has no room for a request's estimated credits: nothing was written or spent. Amounts are
    credits; ``budget`` is ``principal_day``, ``principal_month``, ``batch`` or ``global_day``."""

    _reason = "over_budget"

    def __init__(self, budget: str, limit: float, charged: float, reserved: float, estimate: float) -> None:
        super().__init__(budget, limit, charged, reserved, estimate)
        self.budget = budget
        self.limit = limit
        self.charged = charged
        self.reserved = reserved
        self.estimate = estimate

    def __str__(self) -> str:
        return (
            f"over budget {self.budget}: limit {self.limit:g} credits, {self.charged:g} charged and "
            f"{self.reserved:g} reserved, this needs {self.estimate:g} more; nothing was written"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "error": "over_budget",
            "budget": self.budget,
            "limit": self.limit,
            "charged": self.charged,
            "reserved": self.reserved,
            "estimate": self.estimate,
            "detail": str(self),
        }


class UpstreamError(ImagineQError):
    """The upstream API (or the way to it) did not give the answer we asked for."""

    _reason = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        endpoint: str = "",
        request_id: str | None = None,
        body: str | None = None,
    ) -> None:
        message = _truncate(message)
        super().__init__(message)
        self.message = message
        #: HTTP status, None when no response arrived.
        self.status = status
        #: The ``code`` of the response body, None when there was none.
        self.code = code
        self.endpoint = endpoint
        self.request_id = request_id
        self.body = None if body is None else _truncate(body)

    def __str__(self) -> str:
        details = []
        if self.status is not None:
            details.append(f"HTTP {self.status}")
        if self.code is not None and self.code != self.status:
            details.append(f"code {self.code}")
        if self.request_id:
            details.append(f"request id {self.request_id}")
        text = f"{self.endpoint}: {self.message}" if self.endpoint else self.message
        return f"{text} ({', '.join(details)})" if details else text


class RetryableError(UpstreamError):
    """Try again later; waiting for it never consumes a job's retries (the tasks decide)."""

    _reason = "retryable_error"
    _retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        status: int | None = None,
        code: int | None = None,
        endpoint: str = "",
        request_id: str | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, endpoint=endpoint, request_id=request_id, body=body)
        #: The upstream's ``Retry-After`` in seconds, when it gave one.
        self.retry_after_s = retry_after_s


class RateLimited(RetryableError):
    """429: the account is over a rate; every submitter should cool down."""

    _reason = "rate_limited"
    _cools_down_account = True


class Unavailable(RetryableError):
    """500 and other 5xx, 408 outside recordInfo."""

    _reason = "unavailable"


class Maintenance(Unavailable):
    """455: the upstream is under maintenance; every submitter of the account waits."""

    _cools_down_account = True


class TransportError(RetryableError):
    """No usable answer: the request was not sent, or the response could not be understood."""

    _reason = "transport"


class OutcomeUnknown(RetryableError):
    """createTask was sent but no answer came back: the task may exist upstream (and cost credits)."""

    _reason = "outcome_unknown"


class FatalError(UpstreamError):
    """This job fails, with ``reason`` as its failure reason."""

    _reason = "failed"


class Rejected(FatalError):
    """422 (and undocumented 4xx): the upstream refused this request."""

    _reason = "rejected"


class NotFound(FatalError):
    """404: the task (or file) does not exist upstream."""

    _reason = "not_found"


class GenerationFailed(FatalError):
    """501: the upstream tried and failed to generate the video."""

    _reason = "generation_failed"


class ResultTimeout(FatalError):
    """408 from recordInfo: no result for more than 10 minutes."""

    _reason = "timed_out"


class AccountError(UpstreamError):
    """The account must pause until an operator or fresh credits fix it; the job is not failed."""

    _reason = "account_error"


class Unauthorized(AccountError):
    """401 (bad key), 403 (refused, including Cloudflare's bot block "error code: 1010")."""

    _reason = "unauthorized"


class NoCredits(AccountError):
    """402: not enough credits."""

    _reason = "no_credits"


class KeyCapExceeded(AccountError):
    """433: the key's own spending cap is reached."""

    _reason = "key_cap_exceeded"


class FeatureDisabled(AccountError):
    """505: the feature is disabled for this account."""

    _reason = "feature_disabled"


def _truncate(text: str, limit: int = BODY_MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
