"""Batch files where they live: a local path or ``s3://bucket/key``, read as a stream, written whole.

One small interface over both, so batches, manifests and the nightly inbox do not care where a file is:
open a stream, tell a file's identity (its content hash, or the S3 ETag), list an inbox, move a file,
write a file atomically (local: temp file + rename; S3: one upload once the content is complete).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from core.errors import ImagineQError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

S3_SCHEME: Final = "s3://"
BATCH_SUFFIX: Final = ".jsonl"
RESULTS_SUFFIX: Final = ".results.jsonl"
_READ_BUFFER: Final = 1024 * 1024
#: A manifest is built in memory up to this size, then spills to a temporary file before its upload.
_SPOOL_BYTES: Final = 8 * 1024 * 1024


class LocationError(ImagineQError):
    """A batch file or folder cannot be read, written, listed or moved."""


@dataclass(frozen=True)
class Location:
    """A local path or an S3 object (``bucket`` + ``key``); ``uri`` is how users write it."""

    uri: str
    bucket: str | None = None
    key: str = ""

    @classmethod
    def parse(cls, uri: str) -> Location:
        if uri.startswith(S3_SCHEME):
            bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
            if not bucket:
                raise LocationError(f"{uri!r}: an S3 location needs a bucket (s3://bucket/key)")
            return cls(uri, bucket, key)
        if not uri:
            raise LocationError("empty location")
        return cls(str(Path(uri).expanduser().resolve()))

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    @property
    def path(self) -> Path:
        return Path(self.uri)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1] if self.is_s3 else self.path.name

    def sibling(self, name: str) -> Location:
        """The location ``name`` in the same folder (or under the same S3 prefix)."""
        if self.is_s3:
            folder = self.key.rsplit("/", 1)[0] + "/" if "/" in self.key else ""
            return Location(f"{S3_SCHEME}{self.bucket}/{folder}{name}", self.bucket, folder + name)
        return Location(str(self.path.with_name(name)))

    def child(self, name: str) -> Location:
        """``name`` inside this folder (or S3 prefix, read as a folder)."""
        if self.is_s3:
            prefix = self.key if not self.key or self.key.endswith("/") else self.key + "/"
            return Location(f"{S3_SCHEME}{self.bucket}/{prefix}{name}", self.bucket, prefix + name)
        return Location(str(self.path / name))

    def results(self) -> Location:
        """Where a batch's manifest goes: ``<name>.results.jsonl`` next to it."""
        stem = self.name[: -len(BATCH_SUFFIX)] if self.name.endswith(BATCH_SUFFIX) else self.name
        return self.sibling(stem + RESULTS_SUFFIX)


class _StreamingRaw(io.RawIOBase):
    """A raw stream over anything with ``read(n)`` (botocore's StreamingBody), for ``BufferedReader``."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


class Files:
    """Reads, writes, lists and moves batch files; the S3 client is built on first S3 use."""

    def __init__(self, s3_client: Callable[[], S3Client]) -> None:
        self._make_s3 = s3_client
        self._s3: S3Client | None = None

    @property
    def s3(self) -> S3Client:
        if self._s3 is None:
            self._s3 = self._make_s3()
        return self._s3

    def open(self, location: Location) -> IO[bytes]:
        """A buffered binary stream (``readline(limit)`` works on both kinds)."""
        try:
            if location.is_s3:
                assert location.bucket is not None
                body = self.s3.get_object(Bucket=location.bucket, Key=location.key)["Body"]
                return io.BufferedReader(_StreamingRaw(body), buffer_size=_READ_BUFFER)
            return location.path.open("rb", buffering=_READ_BUFFER)
        except Exception as error:
            raise LocationError(f"cannot read {location.uri}: {error}") from error

    def identity(self, location: Location) -> str:
        """What the file *is*: ``sha256:<hex>`` of its content (local), ``etag:<etag>:<size>`` on S3."""
        try:
            if location.is_s3:
                assert location.bucket is not None
                head = self.s3.head_object(Bucket=location.bucket, Key=location.key)
                return f"etag:{head['ETag'].strip(chr(34))}:{head['ContentLength']}"
            digest = hashlib.sha256()
            with location.path.open("rb") as handle:
                while chunk := handle.read(_READ_BUFFER):
                    digest.update(chunk)
            return f"sha256:{digest.hexdigest()}"
        except Exception as error:
            raise LocationError(f"cannot read {location.uri}: {error}") from error

    def version(self, location: Location) -> str:
        """Cheap change marker for an inbox file (local: mtime and size; S3: ETag)."""
        if location.is_s3:
            return self.identity(location)
        stat = location.path.stat()
        return f"{stat.st_mtime_ns}:{stat.st_size}"

    def exists(self, location: Location) -> bool:
        if not location.is_s3:
            return location.path.exists()
        assert location.bucket is not None
        found = self.s3.list_objects_v2(Bucket=location.bucket, Prefix=location.key, MaxKeys=1)
        return any(item["Key"] == location.key for item in found.get("Contents", []))

    def write_lines(self, location: Location, lines: Iterable[bytes]) -> None:
        """Write the whole file; readers never see half of it."""
        try:
            if location.is_s3:
                assert location.bucket is not None
                with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as spool:
                    spool.writelines(lines)
                    spool.seek(0)
                    self.s3.upload_fileobj(
                        spool,
                        location.bucket,
                        location.key,
                        ExtraArgs={"ContentType": "application/x-ndjson"},
                    )
                return
            location.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(prefix=f".{location.name}.", dir=location.path.parent)
            try:
                with os.fdopen(fd, "wb", buffering=_READ_BUFFER) as handle:
                    handle.writelines(lines)
                os.replace(temp, location.path)
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        except LocationError:
            raise
        except Exception as error:
            raise LocationError(f"cannot write {location.uri}: {error}") from error

    def list_batches(self, folder: Location) -> list[Location]:
        """Batch files (``*.jsonl``, not manifests) directly inside ``folder``, by name."""
        try:
            if folder.is_s3:
                assert folder.bucket is not None
                prefix = folder.child("").key
                found: list[Location] = []
                pages = self.s3.get_paginator("list_objects_v2").paginate(
                    Bucket=folder.bucket, Prefix=prefix, Delimiter="/"
                )
                for page in pages:
                    for item in page.get("Contents", []):
                        name = item["Key"][len(prefix) :]
                        if _is_batch_name(name):
                            found.append(folder.child(name))
                return sorted(found, key=lambda location: location.uri)
            if not folder.path.is_dir():
                return []
            return [
                Location(str(path))
                for path in sorted(folder.path.iterdir())
                if path.is_file() and _is_batch_name(path.name)
            ]
        except Exception as error:
            raise LocationError(f"cannot list {folder.uri}: {error}") from error

    def move(self, source: Location, target: Location) -> None:
        """Move a file (S3: copy, then delete the original)."""
        try:
            if source.is_s3 != target.is_s3:
                raise LocationError(f"cannot move {source.uri} to {target.uri}: one is local, one on S3")
            if source.is_s3:
                assert source.bucket is not None and target.bucket is not None
                self.s3.copy({"Bucket": source.bucket, "Key": source.key}, target.bucket, target.key)
                self.s3.delete_object(Bucket=source.bucket, Key=source.key)
                return
            target.path.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source.path, target.path)
        except LocationError:
            raise
        except Exception as error:
            raise LocationError(f"cannot move {source.uri} to {target.uri}: {error}") from error


def _is_batch_name(name: str) -> bool:
    return name.endswith(BATCH_SUFFIX) and not name.endswith(RESULTS_SUFFIX) and not name.startswith(".")
