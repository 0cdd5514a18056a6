"""The Apikley market API client (the Grok Imagine family), see ARCHITECTURE.md, "The upstream".

One :class:`UpstreamClient` per account. Every call returns the response's ``data`` decoded into a
plain value, or raises an :class:`~core.errors.UpstreamError` built in one place
(:func:`~core.errors.error_from_response` for answers, :meth:`UpstreamClient._transport_error` for
failures of ``requests``). The client never retries: quotas and the tasks own that decision, and
the error class says which one applies.

The API key travels only in the ``Authorization`` header. It is redacted from every response text
before errors are built, and it is never logged, nor is the prompt.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Final
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.exceptions import ProxyError, SSLError
from urllib3.connection import HTTPConnection
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.retry import Retry

from config.settings import AccountSettings, HttpSettings
from core.catalog import model_named
from core.errors import (
    OutcomeUnknown,
    TransportError,
    UpstreamError,
    ValidationError,
)
from workers.upstream.answers import CREATE_TASK, CREDIT, DOWNLOAD_URL, FILE_UPLOAD, RECORD_INFO, error_from_response
from workers.upstream.records import TaskRecord, optional_number

logger = logging.getLogger("imagineq.upstream")

MODEL: Final = "grok-imagine/text-to-video"

_PATHS: Final = {
    CREATE_TASK: "/api/v1/jobs/createTask",
    RECORD_INFO: "/api/v1/jobs/recordInfo",
    DOWNLOAD_URL: "/api/v1/common/download-url",
    CREDIT: "/api/v1/chat/credit",
    FILE_UPLOAD: "/api/file-stream-upload",  # under the account's upload base
}
_REDACTED: Final = "[redacted]"

#: Causes that prove a request never left: the connection itself could not be made.
_NOT_SENT_CAUSES: Final = (NewConnectionError, ConnectTimeoutError, ConnectionRefusedError, socket.gaierror)


#: Origins whose environment settings a session keeps (result links come from a handful of hosts).
ENVIRONMENT_CACHE_SIZE = 256


class Session(requests.Session):
    """A ``requests`` session that reads the environment (proxy and CA-bundle variables) once per origin.

    requests looks them up again on every request, which costs about 0.15 ms of CPU each time: a fifth
    of a recordInfo call. A worker's environment does not change while it runs.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple[Any, ...], Any] = {}

    def merge_environment_settings(
        self, url: Any, proxies: MutableMapping[str, str] | None, stream: Any, verify: Any, cert: Any
    ) -> Any:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, stream, verify, cert, tuple(sorted((proxies or {}).items())))
        found = self._environment.get(key)
        if found is None:
            found = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if len(self._environment) < ENVIRONMENT_CACHE_SIZE:
                self._environment[key] = found
        return {**found, "proxies": dict(found["proxies"])}


#: ``SO_LINGER`` on, 0 s: closing a connection resets it and drops whatever the kernel has not yet sent.
ABORT_ON_CLOSE: Final = (socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class AbortingAdapter(HTTPAdapter):
    """Connections that are reset when closed, not shut down gracefully.

    A request given up after its timeout is closed by urllib3; a graceful close leaves its unacknowledged
    bytes to the kernel, which keeps sending them for minutes (a partitioned link) and can deliver a
    createTask after the heal — past the grace its slot is held for, so the upstream runs a task no
    quota counts. A reset discards them: what the upstream did not receive by the timeout, it never will.
    Answers are always read whole before a connection goes back to the pool or is closed, so nothing
    else is lost.
    """

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["socket_options"] = [*HTTPConnection.default_socket_options, ABORT_ON_CLOSE]
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs.setdefault("socket_options", [*HTTPConnection.default_socket_options, ABORT_ON_CLOSE])
        return super().proxy_manager_for(proxy, **proxy_kwargs)


def build_session(http: HttpSettings, pool_maxsize: int = 32) -> requests.Session:
    """A pooled session with a real User-Agent and no urllib3 retries (we decide retries); its
    connections are reset when closed (:class:`AbortingAdapter`)."""
    session = Session()
    # total=0 with read=False: fail on the first error, and surface read errors as themselves
    # (not MaxRetryError) so a failure after sending can be told from a failure to connect.
    adapter = AbortingAdapter(pool_maxsize=pool_maxsize, max_retries=Retry(total=0, read=False, redirect=False))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = http.user_agent
    session.headers["Accept"] = "application/json"
    return session


class UpstreamClient:
    """Calls the upstream API with one account's key."""

    def __init__(self, account: AccountSettings, http: HttpSettings, session: requests.Session | None = None) -> None:
        """Use ``session`` (shared, left open by :meth:`close`) or build a private one."""
        self._account = account
        self._owns_session = session is None
        self._session = build_session(http) if session is None else session
        self._timeout = (http.connect_timeout_s, http.read_timeout_s)
        self._secret = account.api_key.get_secret_value()
        self._headers = {"Authorization": f"Bearer {self._secret}", "User-Agent": http.user_agent}

    def __repr__(self) -> str:
        return f"UpstreamClient(account={self._account.name!r})"

    @property
    def account_name(self) -> str:
        return self._account.name

    def __enter__(self) -> UpstreamClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the session if this client built it."""
        if self._owns_session:
            self._session.close()

    # -- endpoints ----------------------------------------------------------------------------------
    def create_task(self, input: Mapping[str, Any], *, model: str = MODEL, callback_url: str | None = None) -> str:
        """Create a task of ``model`` with ``input`` (the model's declaration made it:
        ``ModelSpec.upstream_input``) and return its taskId.

        Raises :class:`ValidationError` before sending for a model the catalog does not know or a bad
        callback URL, and :class:`OutcomeUnknown` when the request went out but no usable answer came back.
        """
        model_named(model)
        if not isinstance(input, Mapping):
            raise ValidationError("input", "must be an object")
        if callback_url is not None and urlsplit(callback_url).scheme not in ("http", "https"):
            raise ValidationError("callback_url", "must be an http(s) URL")
        payload: dict[str, Any] = {"model": model, "input": dict(input)}
        if callback_url is not None:
            payload["callBackUrl"] = callback_url
        data = self._call(CREATE_TASK, "POST", json_body=payload)
        task_id = data.get("taskId") if isinstance(data, Mapping) else None
        if not isinstance(task_id, str) or not task_id.strip():
            # The upstream said 200: a task most likely exists, but we cannot name it.
            raise OutcomeUnknown("bad response: success without a taskId", endpoint=CREATE_TASK, status=200)
        return task_id.strip()

    def record_info(self, task_id: str) -> TaskRecord:
        """The task's current state and, once successful, its result URLs."""
        if not task_id.strip():
            raise ValidationError("task_id", "must not be empty")
        data = self._call(RECORD_INFO, "GET", params={"taskId": task_id})
        if isinstance(data, Mapping) and "taskId" not in data and "task_id" not in data:
            data = {**data, "taskId": task_id}
        record = TaskRecord.from_payload(data, endpoint=RECORD_INFO)
        if record.task_id != task_id:
            raise TransportError(f"bad response: asked for task {task_id}, got {record.task_id}", endpoint=RECORD_INFO)
        return record

    def download_url(self, url: str) -> str:
        """A fresh 20-minute link for an upstream-generated file (files are kept about 14 days)."""
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValidationError("url", "must be an http(s) URL")
        data = self._call(DOWNLOAD_URL, "POST", json_body={"url": url})
        if isinstance(data, Mapping):
            data = data.get("url") or data.get("downloadUrl")
        if not isinstance(data, str) or urlsplit(data.strip()).scheme not in ("http", "https"):
            raise TransportError("bad response: no download URL", endpoint=DOWNLOAD_URL, status=200)
        return data.strip()

    def credits(self) -> float:
        """Credits left on the account (a number; the market API's balances may have decimals)."""
        data = self._call(CREDIT, "GET")
        value = optional_number(data)
        if value is None:
            raise TransportError("bad response: credits is not a number", endpoint=CREDIT, status=200)
        return value

    def upload_file(self, data: bytes, *, file_name: str, upload_path: str, media_type: str) -> str:
        """Put ``data`` in the account's file store (the stream upload; files live 3 days there, the same
        name overwrites) and return the URL tasks may name."""
        files = {"file": (file_name, data, media_type)}
        form = {"uploadPath": upload_path, "fileName": file_name}
        answer = self._call(FILE_UPLOAD, "POST", files=files, form=form)
        url = (answer.get("downloadUrl") or answer.get("fileUrl")) if isinstance(answer, Mapping) else None
        if not isinstance(url, str) or urlsplit(url.strip()).scheme not in ("http", "https"):
            raise TransportError("bad response: no URL for the uploaded file", endpoint=FILE_UPLOAD, status=200)
        return url.strip()

    # -- plumbing -----------------------------------------------------------------------------------
    def _call(
        self,
        endpoint: str,
        method: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        files: Mapping[str, Any] | None = None,
        form: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request; return the body's ``data`` or raise the matching UpstreamError."""
        base = self._account.upload_base if endpoint == FILE_UPLOAD else self._account.base_url
        url = base + _PATHS[endpoint]
        status: int | None = None
        code: Any = None
        started = time.monotonic()
        try:
            try:
                response = self._session.request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    files=files,
                    data=form,
                    headers=self._headers,
                    timeout=self._timeout,
                )
            except requests.RequestException as failure:
                raise self._transport_error(endpoint, failure) from failure
            status = response.status_code
            text = self._redact(response.content.decode("utf-8", errors="replace"))
            body = _decode_json(text)
            if isinstance(body, dict):
                code = body.get("code")
            error = error_from_response(endpoint, status, body, text, response.headers)
            if error is not None:
                raise error
            return body.get("data") if isinstance(body, dict) else None  # always a dict on success
        finally:
            logger.debug(
                "%s account=%s status=%s code=%s elapsed_ms=%.0f",
                endpoint,
                self._account.name,
                status,
                code,
                (time.monotonic() - started) * 1000,
            )

    def _transport_error(self, endpoint: str, error: requests.RequestException) -> UpstreamError:
        """Map a ``requests`` failure: not sent → TransportError; sent, no answer → OutcomeUnknown
        for createTask (the task may exist), TransportError elsewhere (reading is harmless to repeat)."""
        detail = self._redact(f"{type(error).__name__}: {error}")
        if not _may_have_been_sent(error):
            return TransportError(f"request not sent: {detail}", endpoint=endpoint)
        if endpoint == CREATE_TASK:
            return OutcomeUnknown(
                f"request sent but no answer, the task may exist upstream: {detail}", endpoint=endpoint
            )
        return TransportError(f"no answer: {detail}", endpoint=endpoint)

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, _REDACTED)


def _may_have_been_sent(error: requests.RequestException) -> bool:
    """False only when the connection itself failed, so the upstream cannot have seen the request.

    ``requests`` wraps a refused connection and a connection reset mid-response alike in
    ``ConnectionError``; only the cause chain tells them apart. Unknown causes count as sent, so a
    createTask is never resubmitted blindly.
    """
    if isinstance(error, requests.ConnectTimeout | SSLError | ProxyError):
        return False
    if isinstance(error, requests.ReadTimeout):
        return True
    if isinstance(error, requests.ConnectionError | requests.exceptions.ChunkedEncodingError):
        return not any(isinstance(cause, _NOT_SENT_CAUSES) for cause in _causes(error))
    # A body that failed to decode was received; anything else (invalid URL, ...) never went out.
    return isinstance(error, requests.exceptions.ContentDecodingError)


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error and everything it wraps (``__cause__``, ``__context__``, ``args``, urllib3's ``reason``)."""
    seen: set[int] = set()
    stack: list[BaseException] = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args)
        stack.extend(item for item in linked if isinstance(item, BaseException))


def _decode_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
