"""The JSON sidecar next to each video: the job record, size and sha256; written last, as the commit mark."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from workers.storage.client import s3_errors
from workers.storage.errors import ObjectMissing
from workers.storage.object_keys import sidecar_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def put_sidecar(client: S3Client, bucket: str, key: str, document: Mapping[str, Any], job_id: str) -> None:
    body = json.dumps(document, default=str, ensure_ascii=False, sort_keys=True).encode()
    with s3_errors(f"cannot write sidecar for {key!r}"):
        client.put_object(
            Bucket=bucket,
            Key=sidecar_key(key),
            Body=body,
            ContentType="application/json",
            Metadata={"job-id": job_id},
        )


def read_sidecar(client: S3Client, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        with s3_errors(f"cannot read sidecar of {key!r}"):
            body = client.get_object(Bucket=bucket, Key=sidecar_key(key))["Body"]
            with contextlib.closing(body):
                document = json.loads(body.read())
    except ObjectMissing:
        return None
    except ValueError:
        return None  # not JSON: treat as incomplete, it will be rewritten
    return document if isinstance(document, dict) else None
