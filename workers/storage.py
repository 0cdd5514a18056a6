"""Results into S3: stream the result URL straight into a multipart upload, hashing on the fly (DESIGN §5).

::

    ImagineQError
    └── StorageError                 url (no query string), status; fatal unless said otherwise
        ├── ResultGone               403/404/410 even after one refresh → job ``expired``
        ├── ResultTooLarge           announced or streamed bytes > ``s3.max_download_bytes``
        ├── BadResult                not http(s), redirect off http(s), not a video, unexpected status;
        │                            retryable only for a body length ≠ Content-Length
        └── TransferError            network or S3 failure (retryable)

Choices worth knowing:

- **Where the sha256 lives.** It is known only after the last byte went up, and S3 metadata is fixed
  when the (multipart) upload starts, so it would take a server-side self-copy to put it there. It goes
  into the JSON sidecar instead (and the job record, via ``StoredObject``). S3's own ``ChecksumSHA256``
  is no substitute: for multipart objects it is a checksum of part checksums.
- **The sidecar is the commit mark.** It is written after the video is uploaded and verified, so
  :meth:`Storage.find` counts a video as stored only when its sidecar exists too; a crash in between
  means the next attempt downloads again and overwrites (same key).
- **No half objects.** The reader raises mid-stream (cap exceeded, body shorter or longer than
  announced), which aborts the multipart upload; a mismatch seen only afterwards deletes the object.
- **Memory** per transfer ≈ ``part_size × (UPLOAD_CONCURRENCY + 2)``: parts waiting or in flight, the
  part being filled, and the join copy of it.
- **Secrets.** URLs in messages and logs lose their query string and user info (presigned signatures).
  The chained ``__cause__`` of a :class:`TransferError` is the library's own exception and may still
  quote a URL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urljoin, urlsplit, urlunsplit

import boto3
import requests
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from config.settings import HttpSettings, S3Settings
from workers.errors import ImagineQError
from workers.streams import HashingReader, LengthMismatch, TooManyBytes
from workers.upstream import Session

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

#: Result URL statuses that mean "this link no longer works" (refresh once, then ``expired``).
GONE_STATUSES: Final = frozenset({403, 404, 410})
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
#: Statuses worth trying again later, besides every 5xx.
RETRYABLE_STATUSES: Final = frozenset({408, 425, 429})
MAX_REDIRECTS: Final = 5
#: Parallel part uploads per transfer; also the number of parts allowed to wait in memory.
UPLOAD_CONCURRENCY: Final = 4
MAX_POOL_CONNECTIONS: Final = 10
S3_MAX_ATTEMPTS: Final = 5
DOWNLOAD_CHUNK_BYTES: Final = 1024 * 1024
VIDEO_CONTENT_TYPE: Final = "video/mp4"
OCTET_STREAM_TYPES: Final = frozenset({"application/octet-stream", "binary/octet-stream"})
_SEGMENT_RE: Final = re.compile(r"[A-Za-z0-9._-]+")


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


@dataclass(frozen=True)
class StoredObject:
    uri: str
    bucket: str
    key: str
    size: int
    sha256: str
    #: False when the object already existed and nothing was downloaded.
    created: bool


def object_key(
    template: str, *, job_id: str, task_id: str | None, account: str | None, when: datetime
) -> str:
    """The object key for a job: ``template`` with ``{yyyy}{mm}{dd}`` (UTC date of ``when``, a naive
    ``when`` is read as UTC), ``{job_id}``, ``{task_id}``, ``{account}``.

    Raises ValueError when the template needs a value that is missing or not a safe path segment
    (letters, digits, ``._-``; not ``.`` or ``..``).
    """
    day = when.astimezone(UTC) if when.tzinfo is not None else when
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    values: dict[str, str] = {
        "yyyy": f"{day.year:04d}",
        "mm": f"{day.month:02d}",
        "dd": f"{day.day:02d}",
    }
    for name, value in (("job_id", job_id), ("task_id", task_id), ("account", account)):
        if name not in names:
            continue
        if value is None:
            raise ValueError(f"key template {template!r} needs {{{name}}}, which this job does not have")
        if not _SEGMENT_RE.fullmatch(value) or value in {".", ".."}:
            raise ValueError(f"{name} {value!r} is not a safe object key segment")
        values[name] = value
    return template.format(**values)


def sidecar_key(key: str) -> str:
    """``videos/x.mp4`` → ``videos/x.json``; other keys get ``.json`` appended."""
    return (key.removesuffix(".mp4") if key.endswith(".mp4") else key) + ".json"


def redact_url(url: str) -> str:
    """The URL without user info, query string and fragment: safe to log (no presigned signatures)."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
    except ValueError:
        return "<unparseable URL>"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def build_s3_client(s3: S3Settings, http: HttpSettings) -> S3Client:
    """An S3 client for AWS or any S3-compatible endpoint; explicit keys if both are set, else the
    default credential chain. Custom endpoints use path-style addressing (MinIO needs no DNS setup)."""
    config = Config(
        connect_timeout=http.connect_timeout_s,
        read_timeout=http.read_timeout_s,
        retries={"mode": "standard", "max_attempts": S3_MAX_ATTEMPTS},
        max_pool_connections=MAX_POOL_CONNECTIONS,
        s3={"addressing_style": "path"} if s3.endpoint_url else None,
        # We hash every byte ourselves (sha256, checked length); botocore's default extra CRC on each
        # upload costs CPU and its aws-chunked uploads are refused by some S3-compatible servers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    explicit = s3.access_key_id is not None and s3.secret_access_key is not None
    return boto3.session.Session().client(
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
        aws_access_key_id=s3.access_key_id.get_secret_value() if explicit and s3.access_key_id else None,
        aws_secret_access_key=(
            s3.secret_access_key.get_secret_value() if explicit and s3.secret_access_key else None
        ),
        config=config,
    )


class Storage:
    """Stores job results in one bucket. Thread-safe as far as its client and session are."""

    def __init__(
        self,
        s3: S3Settings,
        http: HttpSettings,
        *,
        client: S3Client | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self._s3 = s3
        self._http = http
        self._client = client if client is not None else build_s3_client(s3, http)
        self._owns_session = session is None
        self._session = session if session is not None else Session()
        self._timeout = (http.connect_timeout_s, http.download_read_timeout_s)
        part_bytes = s3.part_size_mb * 1024 * 1024
        self._transfer_config = TransferConfig(
            multipart_threshold=part_bytes,
            multipart_chunksize=part_bytes,
            max_concurrency=UPLOAD_CONCURRENCY,
            use_threads=True,
            preferred_transfer_client="classic",
        )
        # s3transfer's default lets 10 parts wait in memory; bound it to what is being sent.
        self._transfer_config.max_in_memory_upload_chunks = UPLOAD_CONCURRENCY

    @property
    def bucket(self) -> str:
        return self._s3.bucket

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def ensure_bucket(self) -> None:
        """Check the bucket exists; create it when missing and ``s3.create_bucket`` is set."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as e:
            if not _is_not_found(e):
                raise TransferError(f"cannot reach bucket {self.bucket!r}: {_client_error_code(e)}") from e
        except BotoCoreError as e:
            raise TransferError(f"cannot reach bucket {self.bucket!r}: {type(e).__name__}") from e
        if not self._s3.create_bucket:
            raise StorageError(f"bucket {self.bucket!r} does not exist (set s3.create_bucket to create it)")
        try:
            if self._s3.region == "us-east-1":
                self._client.create_bucket(Bucket=self.bucket)
            else:
                self._client.create_bucket(
                    Bucket=self.bucket,
                    CreateBucketConfiguration={"LocationConstraint": self._s3.region},  # type: ignore[typeddict-item]
                )
        except ClientError as e:
            if _client_error_code(e) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise TransferError(f"cannot create bucket {self.bucket!r}: {_client_error_code(e)}") from e
        except BotoCoreError as e:
            raise TransferError(f"cannot create bucket {self.bucket!r}: {type(e).__name__}") from e
        logger.info("created bucket %s", self.bucket)

    def find(self, key: str, *, job_id: str | None = None) -> StoredObject | None:
        """The stored video at ``key`` if it is complete (its sidecar exists) and, when ``job_id`` is
        given, its ``job-id`` metadata matches; else None."""
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as e:
            if _is_not_found(e):
                return None
            raise TransferError(f"cannot look up {key!r}: {_client_error_code(e)}") from e
        except BotoCoreError as e:
            raise TransferError(f"cannot look up {key!r}: {type(e).__name__}") from e
        if job_id is not None and head.get("Metadata", {}).get("job-id") != job_id:
            logger.warning("object %s exists but is not marked as job %s's; it will be replaced", key, job_id)
            return None
        sidecar = self._read_sidecar(key)
        size = int(head["ContentLength"])
        if sidecar is None or sidecar.get("size") != size or not isinstance(sidecar.get("sha256"), str):
            logger.warning(
                "object %s has no matching sidecar (an interrupted store); it will be replaced", key
            )
            return None
        return StoredObject(
            uri=f"s3://{self.bucket}/{key}",
            bucket=self.bucket,
            key=key,
            size=size,
            sha256=sidecar["sha256"],
            created=False,
        )

    def store(
        self,
        *,
        job_id: str,
        task_id: str | None,
        account: str | None,
        url: str,
        created_at: datetime,
        prompt_sha256: str,
        sidecar: Mapping[str, Any],
        refresh: Callable[[str], str] | None = None,
        first_attempt: bool = False,
    ) -> StoredObject:
        """Stream ``url`` into S3 under the job's key and write the JSON sidecar next to it.

        Idempotent: a complete object for the job is returned (``created=False``) without downloading.
        ``refresh(url)`` is asked once for a fresh link when the URL answers 403/404/410; its own
        errors propagate unchanged. A job the key template cannot name (missing or unsafe
        ``task_id``/``account``) is a fatal :class:`StorageError`.
        """
        try:
            key = object_key(
                self._s3.key_template, job_id=job_id, task_id=task_id, account=account, when=created_at
            )
        except ValueError as e:
            raise StorageError(f"no object key for job {job_id!r}: {e}") from e
        # ``first_attempt``: the caller knows no earlier attempt ever began an upload for this job, so
        # there is nothing to find (saves a HEAD per job).
        existing = None if first_attempt else self.find(key, job_id=job_id)
        if existing is not None:
            logger.info("job %s already stored at %s; not downloading again", job_id, existing.uri)
            return existing
        metadata = {"job-id": job_id, "prompt-sha256": prompt_sha256}
        if task_id is not None:
            metadata["task-id"] = task_id
        with self._open_result(url, refresh) as response:
            announced = _content_length(response)
            size, sha256 = self._upload(response, key, metadata, announced)
        if not self._fits_one_put(announced):
            self._verify(key, expected=size, url=url)
        uri = f"s3://{self.bucket}/{key}"
        document = {
            **sidecar,
            "job_id": job_id,
            "task_id": task_id,
            "s3_uri": uri,
            "size": size,
            "sha256": sha256,
            "stored_at": datetime.now(UTC).isoformat(),
        }
        self._put_sidecar(key, document, job_id)
        logger.info("stored job %s at %s (%d bytes) from %s", job_id, uri, size, redact_url(url))
        return StoredObject(uri=uri, bucket=self.bucket, key=key, size=size, sha256=sha256, created=True)

    # -- download -----------------------------------------------------------------------------------
    def _open_result(self, url: str, refresh: Callable[[str], str] | None) -> requests.Response:
        """A 200 streaming response with an acceptable size and type, refreshing a gone URL once."""
        response = self._follow(url)
        if response.status_code in GONE_STATUSES:
            status = response.status_code
            response.close()
            if refresh is None:
                raise ResultGone("result URL is gone and cannot be refreshed", url=url, status=status)
            fresh = refresh(url)
            logger.info("result URL answered %d; refreshed it (%s)", status, redact_url(fresh))
            response = self._follow(fresh)
            if response.status_code in GONE_STATUSES:
                status = response.status_code
                response.close()
                raise ResultGone("result URL is gone, even after a refresh", url=fresh, status=status)
        try:
            _check_response(response, self._s3.max_download_bytes)
        except StorageError:
            response.close()
            raise
        return response

    def _follow(self, url: str) -> requests.Response:
        """GET ``url``, following at most MAX_REDIRECTS redirects, none of them off http(s)."""
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            _require_http(current, "result URL")
            try:
                response = self._session.get(
                    current,
                    stream=True,
                    allow_redirects=False,
                    timeout=self._timeout,
                    headers={"User-Agent": self._http.user_agent, "Accept-Encoding": "identity"},
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

    # -- upload -------------------------------------------------------------------------------------
    def _fits_one_put(self, announced: int | None) -> bool:
        """Small results go up in one PUT of bytes already in hand (bounded by the part size): S3 stores
        exactly what was sent, so there is nothing to verify afterwards."""
        return announced is not None and announced < self._transfer_config.multipart_threshold

    def _upload(
        self, response: requests.Response, key: str, metadata: dict[str, str], announced: int | None
    ) -> tuple[int, str]:
        """Stream the body into ``key``; (size, sha256). Any failure leaves no object behind."""
        reader = HashingReader(
            response.iter_content(chunk_size=DOWNLOAD_CHUNK_BYTES),
            max_bytes=self._s3.max_download_bytes,
            expected_bytes=announced,
        )
        url = response.url
        try:
            if self._fits_one_put(announced):
                body = reader.read(announced or 0)
                reader.read(1)  # reaches the end: raises LengthMismatch if more (or fewer) bytes arrive
                self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType=VIDEO_CONTENT_TYPE, Metadata=metadata
                )
            else:
                self._client.upload_fileobj(
                    reader,  # type: ignore[arg-type]  # s3transfer takes any object with read()
                    self.bucket,
                    key,
                    ExtraArgs={"ContentType": VIDEO_CONTENT_TYPE, "Metadata": metadata},
                    Config=self._transfer_config,
                )
        except TooManyBytes as e:
            raise ResultTooLarge(
                f"result exceeds the cap of {self._s3.max_download_bytes} bytes while streaming", url=url
            ) from e
        except LengthMismatch as e:
            raise BadResult(str(e), url=url, retryable=True) from e
        except requests.RequestException as e:
            if announced is not None and reader.bytes_read < announced:
                raise BadResult(
                    f"body ended after {reader.bytes_read} of {announced} announced bytes "
                    f"({type(e).__name__})",
                    url=url,
                    retryable=True,
                ) from e
            raise TransferError(f"download failed: {type(e).__name__}", url=url) from e
        except ClientError as e:
            raise TransferError(f"upload of {key!r} failed: {_client_error_code(e)}", url=url) from e
        except (BotoCoreError, S3UploadFailedError) as e:
            raise TransferError(f"upload of {key!r} failed: {type(e).__name__}", url=url) from e
        return reader.bytes_read, reader.hexdigest()

    def _verify(self, key: str, *, expected: int, url: str) -> None:
        """The object holds exactly ``expected`` bytes, or it is deleted and BadResult raised."""
        try:
            actual = int(self._client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except (BotoCoreError, ClientError) as e:
            raise TransferError(f"cannot verify {key!r}: {type(e).__name__}", url=url) from e
        if actual != expected:
            self._delete(key)
            raise BadResult(f"stored {actual} bytes, {expected} downloaded", url=url, retryable=True)

    def _delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as e:
            raise TransferError(f"cannot delete {key!r}: {type(e).__name__}") from e

    # -- sidecar ------------------------------------------------------------------------------------
    def _put_sidecar(self, key: str, document: Mapping[str, Any], job_id: str) -> None:
        body = json.dumps(document, default=str, ensure_ascii=False, sort_keys=True).encode()
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=sidecar_key(key),
                Body=body,
                ContentType="application/json",
                Metadata={"job-id": job_id},
            )
        except ClientError as e:
            raise TransferError(f"cannot write sidecar for {key!r}: {_client_error_code(e)}") from e
        except BotoCoreError as e:
            raise TransferError(f"cannot write sidecar for {key!r}: {type(e).__name__}") from e

    def _read_sidecar(self, key: str) -> dict[str, Any] | None:
        try:
            body = self._client.get_object(Bucket=self.bucket, Key=sidecar_key(key))["Body"]
            with contextlib.closing(body):
                document = json.loads(body.read())
        except ClientError as e:
            if _is_not_found(e):
                return None
            raise TransferError(f"cannot read sidecar of {key!r}: {_client_error_code(e)}") from e
        except BotoCoreError as e:
            raise TransferError(f"cannot read sidecar of {key!r}: {type(e).__name__}") from e
        except ValueError:
            return None  # not JSON: treat as incomplete, it will be rewritten
        return document if isinstance(document, dict) else None


def _require_http(url: str, what: str) -> None:
    if urlsplit(url).scheme.lower() not in {"http", "https"} or not urlsplit(url).hostname:
        raise BadResult(f"{what} is not an http(s) URL", url=url)


def _check_response(response: requests.Response, max_bytes: int) -> None:
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


def _content_length(response: requests.Response) -> int | None:
    """The announced body length, when it describes the bytes we will read (no content coding)."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    announced = response.headers.get("Content-Length", "").strip()
    if encoding not in {"", "identity"} or not announced.isdigit():
        return None
    return int(announced)


def _client_error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "unknown"))


def _is_not_found(error: ClientError) -> bool:
    code = _client_error_code(error)
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"404", "NoSuchKey", "NoSuchBucket", "NotFound"} or status == 404
