"""The one exception the simulator's logic raises to produce an upstream error answer."""

from __future__ import annotations

#: Reason phrases for the non-standard codes the upstream uses, for HTTP error style.
REASONS: dict[int, str] = {
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    410: "Gone",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    433: "Key Cap Exceeded",
    455: "Service Unavailable (maintenance)",
    500: "Internal Server Error",
    501: "Generation Failed",
    503: "Service Unavailable",
    505: "Feature Disabled",
}


class ApiError(Exception):
    """An upstream error: ``code`` goes in the body (and the HTTP status in ``http`` style)."""

    def __init__(self, code: int, msg: str, retry_after_s: int | None = None) -> None:
        super().__init__(f"{code} {msg}")
        self.code = code
        self.msg = msg
        #: Whole wall seconds for the ``Retry-After`` header (429 only).
        self.retry_after_s = retry_after_s
