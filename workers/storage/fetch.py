"""Fetching a result: GET the URL as a stream, follow redirects by hand, refresh a gone link once.

Every URL, the first and each redirect hop, must name an allowed result host, and the connection goes
only to public (or explicitly allowed) addresses (:mod:`workers.storage.destinations`). Nothing is read
from the body here: a response is refused, before any byte of it is read, for a status, a size or a
content type we will not store; the caller streams what is accepted.

A refused destination is a fatal :class:`BadResult` whose message names the host and the setting, never
anything learnt about the network behind it: nothing is connected to before the checks pass.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import urljoin, urlsplit

import requests

from config.settings import DownloadSettings, HttpSettings, redact_url
from workers.storage.destinations import AddressPolicy, HostAllowlist, RefusedDestination, guarded_session
from workers.storage.errors import BadResult, ResultGone, ResultTooLarge, StorageError, TransferError

logger = logging.getLogger("workers.storage")

#: Result URL statuses that mean "this link no longer works" (refresh once, then ``expired``).
GONE_STATUSES: Final = frozenset({403, 404, 410})
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
#: Statuses worth trying again later, besides every 5xx.
RETRYABLE_STATUSES: Final = frozenset({408, 425, 429})
MAX_REDIRECTS: Final = 5


class ResultFetcher:
    """Opens result URLs on an HTTP session of its own, with guarded connections."""

    def __init__(
        self, http: HttpSettings, downloads: DownloadSettings, *, result_hosts: Sequence[str], max_bytes: int
    ) -> None:
        self._hosts = HostAllowlist.of(result_hosts)
        self._session = guarded_session(AddressPolicy.of(downloads.allow_networks), user_agent=http.user_agent)
        self._timeout = (http.connect_timeout_s, http.download_read_timeout_s)
        self._max_bytes = max_bytes
        self._content_types = tuple(downloads.content_types)

    def close(self) -> None:
        self._session.close()

    def open(self, url: str, refresh: Callable[[str], str] | None, *, kind: str | None = None) -> requests.Response:
        """A 200 streaming response with an acceptable size and type (of ``kind``'s, ``video``/``image``,
        when given), refreshing a gone URL once."""
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
        allowed = self._content_types
        if kind is not None:  # a video model's result is no image, and the other way round
            allowed = tuple(t for t in allowed if t.split("/", 1)[0] not in ({"video", "image"} - {kind}))
        try:
            check_response(response, self._max_bytes, allowed or (f"{kind}/* (not in downloads.content_types)",))
        except StorageError:
            response.close()
            raise
        return response

    def follow(self, url: str) -> requests.Response:
        """GET ``url``, following at most MAX_REDIRECTS redirects, each to an allowed result host."""
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            require_http(current, "result URL")
            parts = urlsplit(current)
            host = parts.hostname or ""
            try:
                port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
            except ValueError:
                raise BadResult("result URL has an invalid port", url=current) from None
            if not self._hosts.allows(host, port):
                raise BadResult(f"{host}:{port} is not an allowed result host (downloads.result_hosts)", url=current)
            try:
                response = self._session.get(
                    current,
                    stream=True,
                    allow_redirects=False,
                    timeout=self._timeout,
                    headers={"Accept-Encoding": "identity"},  # the session sends the User-Agent
                )
            except RefusedDestination as e:
                raise BadResult(
                    f"{host!r} resolves to an address results may not come from (downloads.allow_networks)",
                    url=current,
                ) from e
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


def check_response(response: requests.Response, max_bytes: int, content_types: Sequence[str]) -> None:
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
    media_type = (response.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if not media_type_allowed(media_type, content_types):
        allowed = ", ".join(content_types)
        raise BadResult(f"result is {media_type or 'untyped'}, not one of {allowed} (downloads.content_types)", url=url)


def media_type_allowed(media_type: str, allowed: Sequence[str]) -> bool:
    """``video/mp4`` is allowed by ``video/mp4`` and by ``video/*``."""
    main = media_type.split("/", 1)[0]
    return bool(media_type) and any(
        pattern == media_type or (pattern.endswith("/*") and pattern[:-2] == main) for pattern in allowed
    )


def content_length(response: requests.Response) -> int | None:
    """The announced body length, when it describes the bytes we will read (no content coding)."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    announced = response.headers.get("Content-Length", "").strip()
    if encoding not in {"", "identity"} or not announced.isdigit():
        return None
    return int(announced)
