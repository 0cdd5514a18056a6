"""What every producer does to a request before it is checked: the images it was given as files are stored
in S3, images of earlier jobs and parent jobs are looked up, so the job keeps only references it can use
when it is submitted (``{"url"}`` or ``{"s3"}``, a parent whose task exists).

Files are stored content-addressed (``inputs/<sha256>.<ext>``, once per content), checked first as the
upstream would (``core.images``). A request refused later in the same call leaves its stored inputs
behind; they are named by content, so a retry reuses them, and they hold nothing a job depends on.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from config.settings import Settings
from core.catalog import DEFAULT_MODEL, MODELS, ModelSpec, model_named
from core.catalog.fields import Image, Images
from core.errors import ValidationError
from core.images import IMAGE_MAX_BYTES, check_image_bytes
from core.jobs import Job, JobRequest, JobState
from workers.storage.client import s3_errors
from workers.storage.destinations import HostAllowlist
from workers.storage.errors import ObjectMissing, StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

#: Where files given to producers are kept (by content).
INPUTS_PREFIX: Final = "inputs"

JobLookup = Callable[[str], Job | None]


class Intake:
    """Turns the images and parents of a request into what a job keeps (see the module docstring)."""

    def __init__(self, settings: Settings, jobs: JobLookup, s3: Callable[[], S3Client]) -> None:
        self._settings = settings
        self._jobs = jobs
        self._s3_factory = s3
        self._s3: S3Client | None = None
        self._hosts = HostAllowlist.of(settings.downloads.image_hosts)

    @property
    def s3(self) -> S3Client:
        if self._s3 is None:
            self._s3 = self._s3_factory()
        return self._s3

    # -- a request's fields --------------------------------------------------------------------------
    def values(
        self, spec: ModelSpec, values: Mapping[str, Any], *, owner: str | None, files: Mapping[str, bytes]
    ) -> dict[str, Any]:
        """``values`` with every image made a reference a job keeps (before the values are checked)."""
        out = dict(values)
        for field in spec.fields:
            value = out.get(field.name)
            if value is None:
                continue
            if isinstance(field, Images):
                items = value if isinstance(value, list) else [value]
                out[field.name] = [
                    self.image(f"{field.name}[{index}]", item, owner=owner, files=files)
                    for index, item in enumerate(items)
                ]
            elif isinstance(field, Image):
                out[field.name] = self.image(field.name, value, owner=owner, files=files)
        return out

    def item(self, item: Mapping[str, Any], *, owner: str | None, files: Mapping[str, bytes]) -> dict[str, Any]:
        """:meth:`values` for a decoded JSON job (HTTP, batch line), whose ``model`` names the model; a
        model that does not exist is left for the check to name."""
        try:
            spec = model_named(item.get("model") or DEFAULT_MODEL)
        except ValidationError:
            return dict(item)
        return self.values(spec, item, owner=owner, files=files)

    def with_parent(self, request: JobRequest) -> JobRequest:
        """A checked derived request with its parent looked up (``parent_output``: what it made or will
        make; ``pin``: the parent's account once it is stored, else the request ``waits`` for it); any
        other request as it is."""
        if not request.needs_parent:
            return request
        values = request.values
        parent = self.parent(request.spec, values["parent"], owner=request.owner, index=values.get("index"))
        made = parent.spec.output_of(parent.parent_output)
        if parent.state is not JobState.STORED:
            return dataclasses.replace(request, waits=True, parent_output=made)
        assert request.spec.parent is not None
        pin = parent.account if request.spec.parent.uses_task else request.pin
        return dataclasses.replace(request, pin=pin, parent_output=made)

    # -- images --------------------------------------------------------------------------------------
    def image(self, field: str, value: Any, *, owner: str | None, files: Mapping[str, bytes]) -> Any:
        """One image as a job keeps it; anything this does not recognise is left for the check to name."""
        if isinstance(value, bytes | bytearray):
            return {"s3": self.store(field, bytes(value))}
        if isinstance(value, Path):
            return {"s3": self.store(field, _read_file(field, value))}
        if isinstance(value, str):
            value = {"s3": value} if value.startswith("s3://") else {"url": value}
        if not isinstance(value, dict):
            return value
        if "upload" in value and len(value) == 1:
            name = value["upload"]
            if not isinstance(name, str) or name not in files:
                raise ValidationError(field, f"upload names no file part of the request ({str(name)[:60]!r})")
            return {"s3": self.store(field, files[name])}
        if "base64" in value and len(value) == 1:
            return {"s3": self.store(field, _base64(field, value["base64"]))}
        if "job" in value and set(value) <= {"job", "output"}:
            return {"s3": self.job_image(field, value["job"], value.get("output", 0), owner=owner)}
        if "s3" in value and len(value) == 1 and isinstance(value["s3"], str):
            self.own_object(field, value["s3"])
        if "url" in value and len(value) == 1 and isinstance(value["url"], str):
            self.allowed_url(field, value["url"])
        return value

    def store(self, field: str, data: bytes) -> str:
        """Check ``data`` as an input image and keep it in S3 (once per content); its s3:// URI."""
        checked = check_image_bytes(field, data)
        key = f"{INPUTS_PREFIX}/{hashlib.sha256(data).hexdigest()}.{checked.extension}"
        bucket = self._settings.s3.bucket
        try:
            try:
                with s3_errors(f"cannot look up the image of {field}"):
                    self.s3.head_object(Bucket=bucket, Key=key)
            except ObjectMissing:
                with s3_errors(f"cannot store the image of {field}"):
                    self.s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=checked.media_type)
        except StorageError as error:
            raise StorageError(f"{field}: the image could not be stored ({error})") from error
        return f"s3://{bucket}/{key}"

    def own_object(self, field: str, uri: str) -> None:
        """An ``s3://`` image must be an object of this deployment's bucket that exists."""
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not uri.startswith("s3://") or not key:
            return  # the check names the shape
        if bucket != self._settings.s3.bucket:
            raise ValidationError(
                field, f"s3 must name an object of this deployment's bucket ({self._settings.s3.bucket})"
            )
        try:
            with s3_errors(f"cannot look up {uri}"):
                head = self.s3.head_object(Bucket=bucket, Key=key)
        except ObjectMissing:
            raise ValidationError(field, f"no object {uri}") from None
        if int(head["ContentLength"]) > IMAGE_MAX_BYTES:
            raise ValidationError(field, f"must be at most {IMAGE_MAX_BYTES // (1024 * 1024)} MB")

    def allowed_url(self, field: str, url: str) -> None:
        """An image URL must name a host images may come from (``downloads.image_hosts``); its addresses
        are checked when it is fetched."""
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValidationError(field, "url has an invalid port") from None
        if parts.hostname and not self._hosts.allows(parts.hostname, port):
            raise ValidationError(
                field, f"{parts.hostname}:{port} is not a host images may come from (downloads.image_hosts)"
            )

    def job_image(self, field: str, job_id: Any, output: Any, *, owner: str | None) -> str:
        """The URI of image ``output`` of an earlier (stored) job the owner may see."""
        if not isinstance(output, int) or isinstance(output, bool) or output < 0:
            raise ValidationError(field, "output must be a non-negative integer (the job's output index)")
        job = self.visible_job(field, job_id, owner=owner)
        if job.state is not JobState.STORED:
            raise ValidationError(field, f"job {job.id} is {job.state.value}: only a stored job's image can be used")
        if output >= len(job.outputs):
            raise ValidationError(field, f"job {job.id} has {len(job.outputs)} output(s); there is no output {output}")
        chosen = job.outputs[output]
        if not str(chosen.get("content_type", "")).startswith("image/"):
            raise ValidationError(field, f"output {output} of job {job.id} is not an image")
        return str(chosen["uri"])

    # -- parents -------------------------------------------------------------------------------------
    def parent(self, spec: ModelSpec, parent_id: str, *, owner: str | None, index: Any = None) -> Job:
        """The parent job of a derived one: the owner's, stored or still on its way (then the child
        waits for it), of a kind the model takes."""
        assert spec.parent is not None
        parent = self.visible_job("parent", parent_id, owner=owner)
        if parent.state.terminal and parent.state is not JobState.STORED:
            raise ValidationError(
                "parent", f"job {parent.id} is {parent.state.value}: {spec.short} takes a stored job's result"
            )
        if parent.state is JobState.STORED and (not parent.task_id or not parent.account):
            raise ValidationError("parent", f"job {parent.id} has no upstream task to take a result from")
        age = self._settings.parent_max_age_s
        stored_at = parent.timestamps.get(JobState.STORED.value)
        if stored_at is not None and time.time() - stored_at > age:
            raise ValidationError(
                "parent", f"job {parent.id} was stored over {age / 86400:g} days ago: the upstream no longer has it"
            )
        made = parent.spec.output_of(parent.parent_output)
        if made not in spec.parent.outputs:
            kinds = " or ".join(spec.parent.outputs)
            raise ValidationError("parent", f"job {parent.id} made a {made}; {spec.short} takes a {kinds} job")
        if spec is MODELS["image-to-video"]:
            if parent.model != "text-to-image":
                raise ValidationError(
                    "parent", f"job {parent.id} is {parent.model}; image-to-video takes a text-to-image job"
                )
            stored = parent.state is JobState.STORED
            if stored and isinstance(index, int) and not isinstance(index, bool) and index >= len(parent.result_urls):
                raise ValidationError(
                    "index", f"job {parent.id} made {len(parent.result_urls)} image(s); there is no image {index}"
                )
        return parent

    def visible_job(self, field: str, job_id: Any, *, owner: str | None) -> Job:
        if not isinstance(job_id, str) or not job_id:
            raise ValidationError(field, "must name a job id")
        job = self._jobs(job_id)
        principal = self._settings.principal(owner) if owner is not None else None
        if job is None or (principal is not None and not principal.admin and job.owner != owner):
            raise ValidationError(field, f"no job {job_id[:64]}")
        return job


def _read_file(field: str, path: Path) -> bytes:
    try:
        if path.stat().st_size > IMAGE_MAX_BYTES:
            raise ValidationError(field, f"must be at most {IMAGE_MAX_BYTES // (1024 * 1024)} MB ({path})")
        return path.read_bytes()
    except OSError as error:
        raise ValidationError(field, f"cannot read {path}: {error.strerror or error}") from None


def _base64(field: str, data: Any) -> bytes:
    if not isinstance(data, str):
        raise ValidationError(field, "base64 must be a string")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    if len(data) > IMAGE_MAX_BYTES * 4 // 3 + 8:
        raise ValidationError(field, f"must be at most {IMAGE_MAX_BYTES // (1024 * 1024)} MB")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(field, "base64 is not valid base64") from None
