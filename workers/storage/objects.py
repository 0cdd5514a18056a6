"""Storing a job's result: the video streamed into one bucket (single PUT or multipart), then its sidecar.

Choices worth knowing:

- **Where the sha256 lives.** It is known only after the last byte went up, and S3 metadata is fixed
  when the (multipart) upload starts, so it would take a server-side self-copy to put it there. It goes
  into the JSON sidecar instead (and the job record, via ``StoredObject``). S3's own ``ChecksumSHA256``
  is no substitute: for multipart objects it is a checksum of part checksums.
- **The sidecar is the commit mark.** It is written after the video is uploaded and verified, so
  :meth:`Storage.find` counts a video as stored only when its sidecar exists too; a crash in between
  means the next attempt downloads again and overwrites (same key) — except for a single-PUT object,
  whose sha256 and size travel in its metadata (the bytes are in hand before the PUT): one that is
  complete is sealed with its sidecar instead of written again.
- **One write per output.** A PUT to a key found empty is conditional (``If-None-Match: *``), so a
  retried request whose first copy did land (a slow link's read timeout) is refused instead of writing
  a second version; the refusal is then checked to be this job's own bytes.
- **No half objects.** The reader raises mid-stream (cap exceeded, body shorter or longer than
  announced), which aborts the multipart upload; a mismatch seen only afterwards deletes the object.
- **Memory** per transfer ≈ ``part_size × (UPLOAD_CONCURRENCY + 2)``: parts waiting or in flight, the
  part being filled, and the join copy of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import requests
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from config.settings import DownloadSettings, HttpSettings, S3Settings, redact_url
from workers.socket_watch import SocketWatch
from workers.storage.client import build_s3_client, client_error_code, s3_errors
from workers.storage.deadline import TransferTooSlow, TransferWatchdog
from workers.storage.errors import BadResult, ObjectMissing, ResultTooLarge, StorageError, TransferError
from workers.storage.fetch import ResultFetcher, content_length
from workers.storage.object_keys import object_key, output_key
from workers.storage.sidecar import put_sidecar, read_sidecar
from workers.streams import HashingReader, LengthMismatch, TooManyBytes

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger("workers.storage")

#: Parallel part uploads per transfer; also the number of parts allowed to wait in memory.
UPLOAD_CONCURRENCY: Final = 4
#: Small enough that progress shows within seconds at the minimum throughput (the watchdog sees chunks).
DOWNLOAD_CHUNK_BYTES: Final = 64 * 1024
VIDEO_CONTENT_TYPE: Final = "video/mp4"
#: File name extensions by media type, and the one a kind of output takes when its URL names none.
EXTENSIONS: Final = {"video/mp4": "mp4", "image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}
DEFAULT_EXTENSIONS: Final = {"video": "mp4", "image": "png"}
#: What the first bytes of a file say it is.
_SIGNATURES: Final = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"WEBP", 8, "image/webp"),
    (b"ftyp", 4, "video/mp4"),
)


def sniff(head: bytes) -> str | None:
    """The media type the bytes start like (PNG, JPEG, WEBP, MP4), or None."""
    for signature, offset, media_type in _SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return media_type
    return None


def extension_for(url: str, kind: str) -> str:
    """An output's file name extension: the result URL's own, when it is one of ``kind``'s."""
    suffix = url.split("?", 1)[0].rsplit("/", 1)[-1].rpartition(".")[2].lower()
    suffix = "jpg" if suffix == "jpeg" else suffix
    known = {ext for media, ext in EXTENSIONS.items() if media.startswith(kind + "/")}
    return suffix if suffix in known else DEFAULT_EXTENSIONS[kind]


#: Metadata a single-PUT object carries about its own bytes (so a later attempt can tell it is complete).
_SHA256_META: Final = "sha256"
_SIZE_META: Final = "size"


@dataclass(frozen=True)
class StoredObject:
    uri: str
    bucket: str
    key: str
    size: int
    sha256: str
    #: False when the object already existed and nothing was downloaded.
    created: bool
    content_type: str = VIDEO_CONTENT_TYPE

    def output(self, index: int) -> dict[str, Any]:
        """The job record's entry for this object as output ``index``."""
        return {
            "index": index,
            "uri": self.uri,
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class _Found:
    """An object of the job's at its key, complete."""

    obj: StoredObject
    #: False: complete by its own metadata, its sidecar still to be written.
    sealed: bool


class _Absent:
    """Nothing at the key."""


class Storage:
    """Stores job results in one bucket. Thread-safe as far as its client and session are."""

    def __init__(
        self,
        s3: S3Settings,
        http: HttpSettings,
        *,
        downloads: DownloadSettings | None = None,
        result_hosts: Sequence[str] | None = None,
        client: S3Client | None = None,
    ) -> None:
        """``downloads``: which result URLs may be fetched (default: ``DownloadSettings()``);
        ``result_hosts``: the allowed hosts (default: ``downloads.result_hosts``)."""
        self._s3 = s3
        self._http = http
        self._client = client if client is not None else build_s3_client(s3, http)
        downloads = downloads if downloads is not None else DownloadSettings()
        self._downloads = downloads
        self._fetcher = ResultFetcher(
            http,
            downloads,
            result_hosts=downloads.result_hosts if result_hosts is None else result_hosts,
            max_bytes=s3.max_download_bytes,
        )
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
        #: Cleared when the server answers a conditional PUT with NotImplemented.
        self._conditional_puts = True

    @property
    def client(self) -> S3Client:
        """The S3 client (for the objects beside the outputs: a job's input images)."""
        return self._client

    @property
    def bucket(self) -> str:
        return self._s3.bucket

    def close(self) -> None:
        self._fetcher.close()

    def ensure_bucket(self) -> None:
        """Check the bucket exists; create it when missing and ``s3.create_bucket`` is set."""
        try:
            with s3_errors(f"cannot reach bucket {self.bucket!r}"):
                self._client.head_bucket(Bucket=self.bucket)
            return
        except ObjectMissing:
            pass
        if not self._s3.create_bucket:
            raise StorageError(f"bucket {self.bucket!r} does not exist (set s3.create_bucket to create it)")
        with s3_errors(
            f"cannot create bucket {self.bucket!r}", tolerate={"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}
        ):
            if self._s3.region == "us-east-1":
                self._client.create_bucket(Bucket=self.bucket)
            else:
                self._client.create_bucket(
                    Bucket=self.bucket,
                    CreateBucketConfiguration={"LocationConstraint": self._s3.region},  # type: ignore[typeddict-item]
                )
        logger.info("created bucket %s", self.bucket)

    def find(self, key: str, *, job_id: str | None = None) -> StoredObject | None:
        """The stored video at ``key`` if it is complete (its sidecar exists) and, when ``job_id`` is
        given, its ``job-id`` metadata matches; else None."""
        found = self._look(key, job_id)
        return found.obj if isinstance(found, _Found) and found.sealed else None

    def _look(self, key: str, job_id: str | None) -> _Found | _Absent | None:
        """What is at ``key``: :class:`_Absent` (nothing), :class:`_Found` (an object of ``job_id``'s that
        is complete: sealed by its sidecar, or carrying its own sha256 and size), or None (an object to
        be replaced: another job's, or an interrupted store's)."""
        try:
            with s3_errors(f"cannot look up {key!r}"):
                head = self._client.head_object(Bucket=self.bucket, Key=key)
        except ObjectMissing:
            return _Absent()
        metadata = head.get("Metadata", {})
        if job_id is not None and metadata.get("job-id") != job_id:
            logger.warning("object %s exists but is not marked as job %s's; it will be replaced", key, job_id)
            return None
        size = int(head["ContentLength"])
        content_type = str(head.get("ContentType") or VIDEO_CONTENT_TYPE)
        sidecar = read_sidecar(self._client, self.bucket, key)
        if sidecar is not None and sidecar.get("size") == size and isinstance(sidecar.get("sha256"), str):
            return _Found(self._stored(key, size, sidecar["sha256"], content_type, created=False), sealed=True)
        if _SHA256_META in metadata and metadata.get(_SIZE_META) == str(size):
            return _Found(self._stored(key, size, metadata[_SHA256_META], content_type, created=False), sealed=False)
        logger.warning("object %s has no matching sidecar (an interrupted store); it will be replaced", key)
        return None

    def _stored(self, key: str, size: int, sha256: str, content_type: str, *, created: bool) -> StoredObject:
        return StoredObject(
            uri=f"s3://{self.bucket}/{key}",
            bucket=self.bucket,
            key=key,
            size=size,
            sha256=sha256,
            created=created,
            content_type=content_type,
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
        index: int = 0,
        kind: str = "video",
    ) -> StoredObject:
        """Stream ``url`` into S3 as output ``index`` of the job (``workers.storage.object_keys.output_key``)
        and write the JSON sidecar next to it. ``kind``: what the job's model makes (``video`` or
        ``image``): the response's type must be one of it, and so must its bytes when they say.

        Idempotent: a complete object for the output is returned (``created=False``) without downloading.
        ``refresh(url)`` is asked once for a fresh link when the URL answers 403/404/410; its own
        errors propagate unchanged. A job the key template cannot name (missing or unsafe
        ``task_id``/``account``) is a fatal :class:`StorageError`.
        """
        try:
            key = object_key(self._s3.key_template, job_id=job_id, task_id=task_id, account=account, when=created_at)
        except ValueError as e:
            raise StorageError(f"no object key for job {job_id!r}: {e}") from e
        key = output_key(key, index, extension_for(url, kind))
        # ``first_attempt``: the caller knows no earlier attempt ever began an upload for this job, so
        # there is nothing to find (saves a HEAD per job).
        found = _Absent() if first_attempt else self._look(key, job_id)
        if isinstance(found, _Found):
            if found.sealed:
                logger.info("job %s already stored at %s; not downloading again", job_id, found.obj.uri)
            else:
                logger.info("job %s's object %s is complete; writing its sidecar only", job_id, found.obj.uri)
                self._seal(found.obj, job_id, task_id, index, sidecar)
            return found.obj
        metadata = {"job-id": job_id, "prompt-sha256": prompt_sha256}
        if task_id is not None:
            metadata["task-id"] = task_id
        # Watched from before the request: a host that drips its headers is given up as one that drips
        # its body (the sockets of the transfer, every redirect hop's included, are shut on a trip).
        sockets = SocketWatch()
        watchdog = TransferWatchdog(
            sockets.shut,
            min_bytes_per_s=self._downloads.min_bytes_per_s,
            window_s=self._downloads.throughput_window_s,
            deadline_s=self._downloads.deadline_s,
            headers_deadline_s=self._downloads.headers_deadline_s,
        )
        with sockets, watchdog:
            try:
                response = self._fetcher.open(url, refresh, kind=kind)
            except StorageError as e:
                if watchdog.tripped is not None:
                    raise TransferError(watchdog.tripped, url=url) from e
                raise
            watchdog.headers_received()
            with response:
                announced = content_length(response)
                declared = (response.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
                size, sha256, content_type = self._upload(
                    response, key, metadata, announced, watchdog, declared, kind, if_absent=isinstance(found, _Absent)
                )
        if not self._fits_one_put(announced):
            self._verify(key, expected=size, url=url)
        stored = self._stored(key, size, sha256, content_type, created=True)
        self._seal(stored, job_id, task_id, index, sidecar)
        logger.info(
            "stored job %s output %d at %s (%d bytes) from %s", job_id, index, stored.uri, size, redact_url(url)
        )
        return stored

    def _seal(
        self, stored: StoredObject, job_id: str, task_id: str | None, index: int, sidecar: Mapping[str, Any]
    ) -> None:
        """Write the sidecar that marks ``stored`` complete."""
        document = {
            **sidecar,
            "job_id": job_id,
            "task_id": task_id,
            "s3_uri": stored.uri,
            "output": index,
            "content_type": stored.content_type,
            "size": stored.size,
            "sha256": stored.sha256,
            "stored_at": datetime.now(UTC).isoformat(),
        }
        put_sidecar(self._client, self.bucket, stored.key, document, job_id)

    # -- upload -------------------------------------------------------------------------------------
    def _fits_one_put(self, announced: int | None) -> bool:
        """Small results go up in one PUT of bytes already in hand (bounded by the part size): S3 stores
        exactly what was sent, so there is nothing to verify afterwards."""
        return announced is not None and announced < self._transfer_config.multipart_threshold

    def _upload(
        self,
        response: requests.Response,
        key: str,
        metadata: dict[str, str],
        announced: int | None,
        watchdog: TransferWatchdog,
        declared: str,
        kind: str,
        *,
        if_absent: bool,
    ) -> tuple[int, str, str]:
        """Stream the body into ``key`` under ``watchdog``; (size, sha256, content type). Any failure
        leaves no object. The content type is what the first bytes say, when they say, and must be of
        ``kind``; else the declared one. ``if_absent``: the key was found empty, so a single PUT is
        made only if it still is."""
        url = response.url
        reader = HashingReader(
            watchdog.stream(response.iter_content(chunk_size=DOWNLOAD_CHUNK_BYTES)),
            max_bytes=self._s3.max_download_bytes,
            expected_bytes=announced,
        )
        content_type = declared or VIDEO_CONTENT_TYPE
        try:
            sniffed = sniff(reader.peek(16))
            if sniffed is not None and not sniffed.startswith(kind + "/"):
                raise BadResult(f"result is {sniffed} by its bytes, not a {kind}", url=url)
            content_type = sniffed or content_type
            if self._fits_one_put(announced):
                body = reader.read(announced or 0)
                reader.read(1)  # reaches the end: raises LengthMismatch if more (or fewer) bytes arrive
                own = {**metadata, _SHA256_META: reader.hexdigest(), _SIZE_META: str(len(body))}
                self._put_once(key, body, content_type, own, if_absent=if_absent, url=url)
            else:
                with s3_errors(f"upload of {key!r} failed", url=url):
                    self._client.upload_fileobj(
                        reader,  # type: ignore[arg-type]  # s3transfer takes any object with read()
                        self.bucket,
                        key,
                        ExtraArgs={"ContentType": content_type, "Metadata": metadata},
                        Config=self._transfer_config,
                    )
        except TransferTooSlow as e:
            raise TransferError(str(e), url=url) from e
        except TooManyBytes as e:
            raise ResultTooLarge(
                f"result exceeds the cap of {self._s3.max_download_bytes} bytes while streaming", url=url
            ) from e
        except LengthMismatch as e:
            if watchdog.tripped is not None:
                raise TransferError(watchdog.tripped, url=url) from e
            raise BadResult(str(e), url=url, retryable=True) from e
        except requests.RequestException as e:
            if watchdog.tripped is not None:
                raise TransferError(watchdog.tripped, url=url) from e
            if announced is not None and reader.bytes_read < announced:
                raise BadResult(
                    f"body ended after {reader.bytes_read} of {announced} announced bytes ({type(e).__name__})",
                    url=url,
                    retryable=True,
                ) from e
            raise TransferError(f"download failed: {type(e).__name__}", url=url) from e
        return reader.bytes_read, reader.hexdigest(), content_type

    def _put_once(
        self, key: str, body: bytes, content_type: str, metadata: dict[str, str], *, if_absent: bool, url: str
    ) -> None:
        """PUT ``body`` at ``key``; with ``if_absent``, only while the key is empty. A refusal means an
        object appeared: this PUT's own, when a retry follows a first copy that landed unanswered
        (fine), else another's (TransferError: the next attempt looks again)."""
        condition: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent and self._conditional_puts else {}
        try:
            with s3_errors(f"upload of {key!r} failed", url=url):
                self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, Metadata=metadata, **condition
                )
        except TransferError as e:
            code = client_error_code(e.__cause__) if isinstance(e.__cause__, ClientError) else ""
            if condition and code == "NotImplemented":
                # A server without conditional writes: plain PUTs from now on (a retry may then write twice).
                logger.warning("the S3 server refuses If-None-Match on PUT; storing without it")
                self._conditional_puts = False
                self._put_once(key, body, content_type, metadata, if_absent=False, url=url)
                return
            if not condition or code not in {"PreconditionFailed", "ConditionalRequestConflict"}:
                raise
            with s3_errors(f"cannot look up {key!r}", url=url):
                landed = self._client.head_object(Bucket=self.bucket, Key=key).get("Metadata", {})
            if any(landed.get(name) != metadata[name] for name in ("job-id", _SHA256_META, _SIZE_META)):
                raise TransferError(f"another object appeared at {key!r} during the upload", url=url) from e
            logger.info("the PUT of %s had landed before its answer was lost; not writing it again", key)

    def _verify(self, key: str, *, expected: int, url: str) -> None:
        """The object holds exactly ``expected`` bytes, or it is deleted and BadResult raised."""
        with s3_errors(f"cannot verify {key!r}", url=url):
            actual = int(self._client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        if actual != expected:
            self._delete(key)
            raise BadResult(f"stored {actual} bytes, {expected} downloaded", url=url, retryable=True)

    def _delete(self, key: str) -> None:
        with s3_errors(f"cannot delete {key!r}"):
            self._client.delete_object(Bucket=self.bucket, Key=key)
