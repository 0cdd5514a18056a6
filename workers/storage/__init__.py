"""Results into S3: stream the result URL straight into the bucket, hashing on the fly.

- :mod:`~workers.storage.objects`: :class:`Storage`, the video upload (single PUT or multipart) and lookup;
- :mod:`~workers.storage.fetch`: opening a result URL (redirects by hand, one refresh of a gone link);
- :mod:`~workers.storage.sidecar`: the JSON sidecar next to each video, written last as the commit mark;
- :mod:`~workers.storage.object_keys`: where a job's video goes (the key template);
- :mod:`~workers.storage.client`: the S3 client for AWS or any S3-compatible endpoint;
- :mod:`~workers.storage.errors`: the ``StorageError`` family (their URLs shown through ``config.settings.redact_url``).
"""

from config.settings import redact_url
from workers.storage.client import build_s3_client, presigned_get_url
from workers.storage.errors import BadResult, ResultGone, ResultTooLarge, StorageError, TransferError
from workers.storage.object_keys import object_key, sidecar_key
from workers.storage.objects import Storage, StoredObject

__all__ = [
    "BadResult",
    "ResultGone",
    "ResultTooLarge",
    "Storage",
    "StorageError",
    "StoredObject",
    "TransferError",
    "build_s3_client",
    "object_key",
    "presigned_get_url",
    "redact_url",
    "sidecar_key",
]
