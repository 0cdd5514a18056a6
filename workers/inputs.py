"""A job's inputs at submit time, on the account it runs on: its images in the account's upstream file store
(each fetched, checked, kept in S3 beside the job's outputs, and uploaded once per content and account while
the store keeps it), and its parent's upstream task.

An image URL is fetched under the same guard as results (allowed hosts, here ``downloads.image_hosts``;
public addresses only unless ``downloads.allow_networks``; a size cap; a deadline); an ``s3://`` image is
read from this deployment's bucket.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Final, cast

from config.settings import Settings
from core.catalog import Resolved
from core.errors import ImagineQError, ValidationError
from core.images import IMAGE_MAX_BYTES, CheckedImage, check_image_bytes
from core.jobs import Job, JobState
from core.jobstore import JobStore
from core.keys import Keys
from workers.socket_watch import SocketWatch
from workers.storage.client import s3_errors
from workers.storage.deadline import TransferWatchdog
from workers.storage.errors import ObjectMissing, StorageError
from workers.storage.fetch import ResultFetcher
from workers.storage.object_keys import input_key, object_key
from workers.storage.objects import Storage
from workers.streams import HashingReader, TooManyBytes
from workers.upstream import UpstreamClient

log = logging.getLogger("imagineq.inputs")

#: Where uploaded images go in the upstream's file store.
UPLOAD_PATH: Final = "imagineq"


class InputError(ImagineQError):
    """A job's input cannot be used: ``retryable`` when it may work later (S3 or a host down), else the
    job fails with ``reason``."""

    def __init__(self, message: str, *, reason: str, retryable: bool) -> None:
        super().__init__(message)
        self._input_reason = reason
        self._input_retryable = retryable

    @property
    def reason(self) -> str:
        return self._input_reason

    @property
    def retryable(self) -> bool:
        return self._input_retryable


class Inputs:
    """Resolves jobs' inputs for one worker process (an image fetcher and the S3 client of its storage)."""

    def __init__(self, settings: Settings, redis: Any, keys: Keys, jobs: JobStore, storage: Storage) -> None:
        self._settings = settings
        self._redis = redis
        self._keys = keys
        self._jobs = jobs
        self._storage = storage
        self._fetcher = ResultFetcher(
            settings.http,
            settings.downloads,
            result_hosts=settings.downloads.image_hosts,
            max_bytes=IMAGE_MAX_BYTES,
        )

    def close(self) -> None:
        self._fetcher.close()

    def resolve(self, job: Job, client: UpstreamClient) -> Resolved:
        """What the job's ``input`` needs besides its own fields, on ``client``'s account."""
        parent_task_id = self._parent_task(job, client.account_name) if job.input.get("parent") else None
        urls = [self._upload(job, index, ref, client) for index, ref in enumerate(images_of(job))]
        return Resolved(image_urls=urls, parent_task_id=parent_task_id)

    def _parent_task(self, job: Job, account: str) -> str:
        parent = self._jobs.get(str(job.input["parent"]))
        if parent is None or parent.task_id is None:
            raise InputError(f"parent job {job.input['parent']} is gone", reason="parent_gone", retryable=False)
        if parent.account != account:
            raise InputError(
                f"parent job {parent.id} ran on account {parent.account}, not {account}",
                reason="parent_elsewhere",
                retryable=False,
            )
        if parent.state is not JobState.STORED:
            raise InputError(f"parent job {parent.id} is {parent.state.value}", reason="parent_gone", retryable=False)
        return parent.task_id

    def _upload(self, job: Job, index: int, ref: dict[str, str], client: UpstreamClient) -> str:
        data = self._read(ref)
        try:
            checked = check_image_bytes(f"image {index}", data)
        except ValidationError as error:
            raise InputError(str(error), reason="invalid_input", retryable=False) from None
        digest = hashlib.sha256(data).hexdigest()
        self._keep_beside_outputs(job, client.account_name, index, data, checked)
        cache = self._keys.uploaded(client.account_name, digest)
        known = cast("str | bytes | None", self._redis.get(cache))
        if known is not None:
            return known.decode() if isinstance(known, bytes) else known
        url = client.upload_file(
            data, file_name=f"{digest}.{checked.extension}", upload_path=UPLOAD_PATH, media_type=checked.media_type
        )
        self._redis.set(cache, url, px=round(self._settings.upload_reuse_s * 1000))
        log.info("job %s: image %d uploaded to account %s (%d bytes)", job.id, index, client.account_name, len(data))
        return url

    def _read(self, ref: dict[str, str]) -> bytes:
        if "s3" in ref:
            bucket, _, key = ref["s3"].removeprefix("s3://").partition("/")
            try:
                with s3_errors(f"cannot read {ref['s3']}"):
                    body = self._storage.client.get_object(Bucket=bucket, Key=key)["Body"]
                    with contextlib.closing(body):
                        data = body.read(IMAGE_MAX_BYTES + 1)
            except ObjectMissing:
                raise InputError(f"no object {ref['s3']}", reason="input_gone", retryable=False) from None
            except StorageError as error:
                raise InputError(str(error), reason=error.reason, retryable=error.retryable) from error
            return data
        return self._fetch(ref["url"])

    def _fetch(self, url: str) -> bytes:
        downloads = self._settings.downloads
        sockets = SocketWatch()
        watchdog = TransferWatchdog(
            sockets.shut,
            min_bytes_per_s=downloads.min_bytes_per_s,
            window_s=downloads.throughput_window_s,
            deadline_s=downloads.deadline_s,
            headers_deadline_s=downloads.headers_deadline_s,
        )
        try:
            with sockets, watchdog:
                response = self._fetcher.open(url, None, kind="image")
                watchdog.headers_received()
                with response:
                    reader = HashingReader(
                        watchdog.stream(response.iter_content(chunk_size=64 * 1024)), max_bytes=IMAGE_MAX_BYTES
                    )
                    return reader.read()
        except TooManyBytes:
            raise InputError(
                f"the image at the URL is over {IMAGE_MAX_BYTES} bytes", reason="invalid_input", retryable=False
            ) from None
        except StorageError as error:
            if watchdog.tripped is not None:
                raise InputError(watchdog.tripped, reason="transfer", retryable=True) from error
            raise InputError(f"image URL: {error}", reason=error.reason, retryable=error.retryable) from error
        except OSError as error:
            raise InputError(f"image URL: {type(error).__name__}", reason="transfer", retryable=True) from error

    def _keep_beside_outputs(self, job: Job, account: str, index: int, data: bytes, checked: CheckedImage) -> None:
        """The original is kept in S3 beside the job's outputs (the key names the job and the index)."""
        try:
            base = object_key(
                self._settings.s3.key_template,
                job_id=job.id,
                task_id=None,
                account=account,
                when=datetime.fromtimestamp(job.created_at, tz=UTC),
            )
        except ValueError:
            return  # a template naming the task (not known yet): the original stays where it came from
        key = input_key(base, index, checked.extension)
        try:
            with s3_errors(f"cannot keep image {index} of job {job.id}"):
                self._storage.client.put_object(
                    Bucket=self._storage.bucket,
                    Key=key,
                    Body=data,
                    ContentType=checked.media_type,
                    Metadata={"job-id": job.id},
                )
        except StorageError as error:
            raise InputError(str(error), reason=error.reason, retryable=True) from error


def images_of(job: Job) -> Iterator[dict[str, str]]:
    """The job's image references, in the order its model sends them."""
    for field in job.spec.fields:
        value = job.input.get(field.name)
        if field.name == "image" and isinstance(value, dict):
            yield value
        elif field.name == "images" and isinstance(value, list):
            yield from (item for item in value if isinstance(item, dict))
