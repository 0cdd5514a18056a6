"""Fetching a result: GET the URL as a stream, follow redirects by hand, refresh a gone link once.

Nothing is read from the body here: a response is refused, before any byte of it is read, for a status,
a size or a content type we will not store; the caller streams what is accepted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final
from urllib.parse import urljoin, urlsplit

import requests

from config.settings import HttpSettings
from workers.storage.errors import BadResult, ResultGone, ResultTooLarge, StorageError, TransferError
from workers.storage.urls import redact_url
from workers.upstream import Session

logger = logging.getLogger("workers.storage")

#: Result URL statuses that mean "this link no longer works" (refresh once, then ``expired``).
GONE_STATUSES: Final = frozenset({403, 404, 410})
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
#: Statuses worth trying again later, besides every 5xx.
RETRYABLE_STATUSES: Final = frozenset({408, 425, 429})
MAX_REDIRECTS: Final = 5
OCTET_STREAM_TYPES: Final = frozenset({"application/octet-stream", "binary/octet-stream"})


class ResultFetcher:
    """Opens result URLs on one HTTP session (its own unless one is given)."""

    def __init__(self, http: HttpSettings, *, max_bytes: int, session: requests.Session | None = None) -> None:
        self._owns_session = session is None
        self._session = session if session is not None else Session()
        self._timeout = (http.connect_timeout_s, http.download_read_timeout_s)
        self._user_agent = http.user_agent
        self._max_bytes = max_bytes

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def open(self, url: str, refresh: Callable[[str], str] | None) -> requests.Response:
        """A 200 streaming response with an acceptable size and type, refreshing a gone URL once."""
        response = self.follow(url)
        if response.status_code in GONE_STATUSES:
            status = response.status_code
            response.close()
            if refresh is None:
                raise ResultGone("result URL is gone and cannot be refreshed", url=url, status=status)
            fresh = refresh(url)
            logger.info("result URL answered %d; refreshed it (%s)", status, redact_url(fresh))
            response = self.follow(fresh)
            if response.status_code in GONE_STATUSES:
                status = response.status_code
                response.close()
                raise ResultGone("result URL is gone, even after a refresh", url=fresh, status=status)
        try:
            check_response(response, self._max_bytes)
        except StorageError:
            response.close()
            raise
        return response

    def follow(self, url: str) -> requests.Response:
        """GET ``url``, following at most MAX_REDIRECTS redirects, none of them off http(s)."""
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            require_http(current, "result URL")
            try:
                response = self._session.get(
                    current,
                    stream=True,
                    allow_redirects=False,
                    timeout=self._timeout,
                    headers={"User-Agent": self._user_agent, "Accept-Encoding": "identity"},
                )
            except requests.RequestException as e:
                raise TransferError(f"GET failed: {type(e).__name__}", url=current) from e
            if response.status_code not in REDIRECT_STATUSES:
                return response
            location = response.headers.get("Location")
            response.close()
            if not location:
                raise BadResult("redirect without a Location", url=current, status=response.status_code)
            current = urljoin(current, location)
            if urlsplit(current).scheme.lower() not in {"http", "https"}:
                raise BadResult(f"redirect to a non-http(s) URL ({urlsplit(current).scheme}:)", url=url)
        raise BadResult(f"more than {MAX_REDIRECTS} redirects", url=url)


def require_http(url: str, what: str) -> None:
    if urlsplit(url).scheme.lower() not in {"http", "https"} or not urlsplit(url).hostname:
        raise BadResult(f"{what} is not an http(s) URL", url=url)


def check_response(response: requests.Response, max_bytes: int) -> None:
    """Refuse, before reading the body, a status, size or content type we will not store."""
    status = response.status_code
    url = response.url
    if status in RETRYABLE_STATUSES or status >= 500:
        raise TransferError("result URL is temporarily unavailable", url=url, status=status)
    if status != 200:
        raise BadResult("unexpected HTTP status from the result URL", url=url, status=status)
    announced = response.headers.get("Content-Length")
    if announced is not None and announced.strip().isdigit() and int(announced) > max_bytes:
        raise ResultTooLarge(f"result is {int(announced)} bytes, over the cap of {max_bytes}", url=url)
    raw_type = response.headers.get("Content-Type")
    if raw_type is None:
        logger.warning("result %s has no Content-Type; accepting it", redact_url(url))
        return
    media_type = raw_type.split(";", 1)[0].strip().lower()
    if not (media_type.startswith("video/") or media_type in OCTET_STREAM_TYPES):
        raise BadResult(f"result is {media_type or 'untyped'}, not a video", url=url)


def content_length(response: requests.Response) -> int | None:
    """The announced body length, when it describes the bytes we will read (no content coding)."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    announced = response.headers.get("Content-Length", "").strip()
    if encoding not in {"", "identity"} or not announced.isdigit():
        return None
    return int(announced)
