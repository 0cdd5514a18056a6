"""The one error tree of ImagineQ, and the mapping from an upstream response to it.

::

    ImagineQError
    ├── ValidationError(field, message)      bad user input; nothing was sent
    ├── RedisFull(used, budget)              Redis is near its maxmemory: new jobs refused, nothing written
    └── UpstreamError                        status, code, endpoint, request_id, body (≤ 500 chars)
        ├── RetryableError(retry_after_s)    try again later; the job is not failed
        │   ├── RateLimited                  429 (the whole account cools down)
        │   ├── Unavailable                  500, other 5xx, 408 outside recordInfo
        │   │   └── Maintenance              455 (the whole account cools down)
        │   ├── TransportError               not sent (connect failure/timeout), or a garbled answer
        │   └── OutcomeUnknown               createTask sent, no answer: the task may exist upstream
        ├── FatalError                       this job fails with ``reason``
        │   ├── Rejected                     422, and any other 4xx (see below)
        │   ├── NotFound                     404
        │   ├── GenerationFailed             501
        │   └── ResultTimeout                408 from recordInfo: no result for > 10 min
        └── AccountError                     the account pauses; the job waits (is not failed)
            ├── Unauthorized                 401, 403 (incl. Cloudflare "error code: 1010")
            ├── NoCredits                    402
            ├── KeyCapExceeded               433
            └── FeatureDisabled              505

Tasks decide from the class alone: ``retryable`` is true exactly for ``RetryableError``, and
``cools_down_account`` for the two that hold every submitter of the account back; an
``AccountError`` is neither retried on the same account nor a job failure — the caller pauses the
account and re-queues the job. ``reason`` is a stable snake_case code for job records and metrics.

Decisions for codes the upstream does not document (all in :data:`_BY_CODE` / :func:`_classify`):

- any other code ≥ 500 → ``Unavailable`` (the server's fault, worth retrying);
- 403 with a JSON body → ``Unauthorized`` (the key is refused: an account matter, not a job's);
- any other 4xx → ``Rejected`` (the upstream refused *this* request; sending it again unchanged would
  loop, so the job fails visibly with the status and code kept on the error);
- a 504 on createTask without a known body code → ``OutcomeUnknown`` (a gateway gave up waiting after
  forwarding the request, so the task may exist — never resubmit that blindly);
- a code below 400 other than 200 → ``TransportError`` (an answer we cannot interpret).

A body that is not a JSON object (HTML from a proxy, plain text) is a ``TransportError`` carrying the
HTTP status, except: 5xx → ``Unavailable``; 429 → ``RateLimited`` (a proxy's rate limit still means
"slow down", and the account cooldown is the right reaction); 403 "error code: 1010" → ``Unauthorized``.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final

#: Short endpoint names used on errors and in logs.
CREATE_TASK: Final = "createTask"
RECORD_INFO: Final = "recordInfo"
DOWNLOAD_URL: Final = "download-url"
CREDIT: Final = "credit"

#: Longest body (and message) kept on an error.
BODY_MAX_CHARS: Final = 500

#: Response headers that may carry the upstream's request id, in order of preference.
REQUEST_ID_HEADERS: Final = (
    "X-Request-Id",
    "X-Request-ID",
    "Request-Id",
    "X-Trace-Id",
    "X-Amzn-Trace-Id",
    "CF-Ray",
)


class ImagineQError(Exception):
    """Root of every error ImagineQ raises on purpose."""

    _reason: ClassVar[str] = "error"
    _retryable: ClassVar[bool] = False
    _cools_down_account: ClassVar[bool] = False

    @property
    def reason(self) -> str:
        """Stable snake_case code, usable as a job failure reason."""
        return self._reason

    @property
    def retryable(self) -> bool:
        """True when the same call, unchanged, may succeed later."""
        return self._retryable

    @property
    def cools_down_account(self) -> bool:
        """True when every submitter of the account must hold back for a while (429, 455)."""
        return self._cools_down_account


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


#: ``(endpoint or None, code) → class``; an endpoint-specific entry wins over the ``None`` one.
_BY_CODE: Final[dict[tuple[str | None, int], type[UpstreamError]]] = {
    (None, 401): Unauthorized,
    (None, 402): NoCredits,
    (None, 403): Unauthorized,
    (None, 404): NotFound,
    (None, 408): Unavailable,
    (RECORD_INFO, 408): ResultTimeout,
    (None, 422): Rejected,
    (None, 429): RateLimited,
    (None, 433): KeyCapExceeded,
    (None, 455): Maintenance,
    (None, 500): Unavailable,
    (None, 501): GenerationFailed,
    (None, 505): FeatureDisabled,
    (CREATE_TASK, 504): OutcomeUnknown,
}
_KNOWN_CODES: Final = frozenset(code for _, code in _BY_CODE)

_CLOUDFLARE_1010_MESSAGE: Final = (
    "blocked by Cloudflare (error code: 1010, bot-like client): send a real browser-like User-Agent "
    "(HttpSettings.user_agent)"
)


def error_from_response(
    endpoint: str,
    http_status: int,
    body_json: Any,
    raw_text: str,
    headers: Mapping[str, str],
) -> UpstreamError | None:
    """The error a response stands for, or None for success (HTTP 2xx with body ``code`` 200).

    ``body_json`` is the decoded body (None when it was not JSON); ``raw_text`` is kept, truncated,
    on the error. The body ``code`` wins over the HTTP status when it is a documented error code, so
    both upstream styles (HTTP 200 + body code, mirrored HTTP status) map alike.
    """
    endpoint = _short_endpoint(endpoint)
    request_id = _request_id(headers)
    body = raw_text
    if not isinstance(body_json, dict):
        if http_status == 403 and "1010" in raw_text:
            return Unauthorized(
                _CLOUDFLARE_1010_MESSAGE,
                status=http_status,
                endpoint=endpoint,
                request_id=request_id,
                body=body,
            )
        # Only a status that means the same with or without a body is trusted without one.
        trusted = http_status == 429 or http_status >= 500
        cls = _classify(endpoint, http_status) if trusted else TransportError
        return _build(
            cls,
            f"bad response: not a JSON object (HTTP {http_status})",
            headers,
            status=http_status,
            code=None,
            endpoint=endpoint,
            request_id=request_id,
            body=body,
        )

    code = _as_int(body_json.get("code"))
    is_2xx = 200 <= http_status < 300
    if is_2xx and code == 200:
        return None
    message = _message(body_json)
    effective: int
    if code is not None and code in _KNOWN_CODES:
        effective = code
    elif not is_2xx:
        effective = http_status
    elif code is None:
        return TransportError(
            f"bad response: no code in body{': ' + message if message else ''}",
            status=http_status,
            endpoint=endpoint,
            request_id=request_id,
            body=body,
        )
    else:
        effective = code
    cls = _classify(endpoint, effective)
    if not message:
        message = f"upstream error {effective}"
    return _build(
        cls,
        message,
        headers,
        status=http_status,
        code=code,
        endpoint=endpoint,
        request_id=request_id,
        body=body,
    )


def _classify(endpoint: str, code: int) -> type[UpstreamError]:
    cls = _BY_CODE.get((endpoint, code)) or _BY_CODE.get((None, code))
    if cls is not None:
        return cls
    if code >= 500:
        return Unavailable
    if code >= 400:
        return Rejected
    return TransportError


def _build(
    cls: type[UpstreamError],
    message: str,
    headers: Mapping[str, str],
    *,
    status: int,
    code: int | None,
    endpoint: str,
    request_id: str | None,
    body: str,
) -> UpstreamError:
    if issubclass(cls, RetryableError):
        return cls(
            message,
            retry_after_s=parse_retry_after(_header(headers, "Retry-After")),
            status=status,
            code=code,
            endpoint=endpoint,
            request_id=request_id,
            body=body,
        )
    return cls(message, status=status, code=code, endpoint=endpoint, request_id=request_id, body=body)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta seconds or HTTP-date); None when absent or garbled."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive one is read as such
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds or seconds == float("inf"):  # NaN / inf
        return None
    return max(0.0, seconds)


def _short_endpoint(endpoint: str) -> str:
    """``/api/v1/jobs/recordInfo?taskId=x`` → ``recordInfo``; short names pass through."""
    return endpoint.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def _message(body: Mapping[str, Any]) -> str:
    for key in ("msg", "message"):
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, item in headers.items():
        if key.lower() == lowered:
            return item
    return None


def _request_id(headers: Mapping[str, str]) -> str | None:
    for name in REQUEST_ID_HEADERS:
        value = _header(headers, name)
        if value:
            return _truncate(value.strip(), 200)
    return None


def _truncate(text: str, limit: int = BODY_MAX_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
