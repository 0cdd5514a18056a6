"""The JSON sidecar next to each video: the job record, size and sha256; written last, as the commit mark."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from workers.storage.client import client_error_code, is_not_found
from workers.storage.errors import TransferError
from workers.storage.object_keys import sidecar_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def put_sidecar(client: S3Client, bucket: str, key: str, document: Mapping[str, Any], job_id: str) -> None:
    body = json.dumps(document, default=str, ensure_ascii=False, sort_keys=True).encode()
    try:
        client.put_object(
            Bucket=bucket,
            Key=sidecar_key(key),
            Body=body,
            ContentType="application/json",
            Metadata={"job-id": job_id},
        )
    except ClientError as e:
        raise TransferError(f"cannot write sidecar for {key!r}: {client_error_code(e)}") from e
    except BotoCoreError as e:
        raise TransferError(f"cannot write sidecar for {key!r}: {type(e).__name__}") from e


def read_sidecar(client: S3Client, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        body = client.get_object(Bucket=bucket, Key=sidecar_key(key))["Body"]
        with contextlib.closing(body):
            document = json.loads(body.read())
    except ClientError as e:
        if is_not_found(e):
            return None
        raise TransferError(f"cannot read sidecar of {key!r}: {client_error_code(e)}") from e
    except BotoCoreError as e:
        raise TransferError(f"cannot read sidecar of {key!r}: {type(e).__name__}") from e
    except ValueError:
        return None  # not JSON: treat as incomplete, it will be rewritten
    return document if isinstance(document, dict) else None
