"""The S3 client for AWS or any S3-compatible endpoint, and the one translation of the errors it raises
(:func:`s3_errors`: boto's errors into the storage errors of :mod:`core.errors`' tree)."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from config.settings import HttpSettings, S3Settings
from workers.storage.errors import ObjectMissing, TransferError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MAX_POOL_CONNECTIONS: Final = 10
S3_MAX_ATTEMPTS: Final = 5


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
        aws_secret_access_key=(s3.secret_access_key.get_secret_value() if explicit and s3.secret_access_key else None),
        config=config,
    )


def presigned_get_url(client: S3Client, s3_uri: str, ttl_s: int) -> str | None:
    """A GET URL of the object ``s3://bucket/key``, valid ``ttl_s``; None for any other location."""
    if not s3_uri.startswith("s3://"):
        return None
    bucket, _, key = s3_uri.removeprefix("s3://").partition("/")
    return str(client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=ttl_s))


def client_error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "unknown"))


def is_not_found(error: ClientError) -> bool:
    code = client_error_code(error)
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"404", "NoSuchKey", "NoSuchBucket", "NotFound"} or status == 404


@contextmanager
def s3_errors(what: str, *, url: str | None = None, tolerate: Collection[str] = ()) -> Iterator[None]:
    """Every S3 call runs in here: boto's errors come out as ``TransferError("<what>: <code or type>")``
    (retryable), a missing bucket or object as its subclass :class:`ObjectMissing` (callers that expect
    one catch it); error codes in ``tolerate`` are not errors at all (the block simply ends)."""
    try:
        yield
    except ClientError as e:
        code = client_error_code(e)
        if code in tolerate:
            return
        if is_not_found(e):
            raise ObjectMissing(f"{what}: {code}", url=url) from e
        raise TransferError(f"{what}: {code}", url=url) from e
    except (BotoCoreError, S3UploadFailedError) as e:
        raise TransferError(f"{what}: {type(e).__name__}", url=url) from e
