"""The upstream's answers read into the error tree (:mod:`core.errors`): one function, status and body
``code`` to class, so the tasks decide retry or fail from the class alone.

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
from typing import Any, Final

from core.errors import (
    FeatureDisabled,
    GenerationFailed,
    KeyCapExceeded,
    Maintenance,
    NoCredits,
    NotFound,
    OutcomeUnknown,
    RateLimited,
    Rejected,
    ResultTimeout,
    RetryableError,
    TransportError,
    Unauthorized,
    Unavailable,
    UpstreamError,
    _truncate,
)

#: Short endpoint names used on errors and in logs.
CREATE_TASK: Final = "createTask"
RECORD_INFO: Final = "recordInfo"
DOWNLOAD_URL: Final = "download-url"
CREDIT: Final = "credit"
FILE_UPLOAD: Final = "file-upload"

#: Response headers that may carry the upstream's request id, in order of preference.
REQUEST_ID_HEADERS: Final = (
    "X-Request-Id",
    "X-Request-ID",
    "Request-Id",
    "X-Trace-Id",
    "X-Amzn-Trace-Id",
    "CF-Ray",
)


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
