"""What can go wrong storing a result, and what each failure means for the job (the tree is drawn whole
in :mod:`core.errors`).

URLs in messages lose their query string and user info (presigned signatures). The chained
``__cause__`` of a :class:`TransferError` is the library's own exception and may still quote a URL.
"""

from __future__ import annotations

from config.settings import redact_url
from core.errors import ImagineQError


class StorageError(ImagineQError):
    """Storing a result failed; ``url`` is shown without its query string."""

    _reason = "storage"

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = None if url is None else redact_url(url)
        #: HTTP status of the result URL, when one was received.
        self.status = status

    def __str__(self) -> str:
        details = [f"HTTP {self.status}"] if self.status is not None else []
        if self.url:
            details.append(self.url)
        return f"{self.message} ({', '.join(details)})" if details else self.message


class ResultGone(StorageError):
    """The result URL answers 403/404/410 even after a refresh: the job is ``expired``."""

    _reason = "expired"


class ResultTooLarge(StorageError):
    """The result is larger than ``s3.max_download_bytes``."""

    _reason = "too_large"


class BadResult(StorageError):
    """The URL or its answer is not a video we may take; retryable only for a length mismatch."""

    _reason = "bad_result"

    def __init__(
        self, message: str, *, url: str | None = None, status: int | None = None, retryable: bool = False
    ) -> None:
        super().__init__(message, url=url, status=status)
        self._is_retryable = retryable

    @property
    def retryable(self) -> bool:
        return self._is_retryable


class TransferError(StorageError):
    """The network or S3 failed; trying again may work."""

    _reason = "transfer"
    _retryable = True


class ObjectMissing(TransferError):
    """S3 says the bucket or object does not exist (callers that expect it may catch this one)."""
