"""Image inputs: what makes bytes an image the upstream takes (JPEG, PNG or WEBP by their content, at most
10 MB, sensible pixel dimensions), checked the same way by the producer (a file given to it) and by the
submit step (an image fetched from a URL or read from S3)."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Final

from PIL import Image, UnidentifiedImageError

from core.errors import ValidationError

#: The upstream's limit on an input image.
IMAGE_MAX_BYTES: Final = 10 * 1024 * 1024
#: Pixel dimensions an input image must have on each side.
IMAGE_MIN_SIDE: Final = 64
IMAGE_MAX_SIDE: Final = 8192
#: Media types by their first bytes (offset, signature).
_SIGNATURES: Final = (
    ("image/png", 0, b"\x89PNG\r\n\x1a\n"),
    ("image/jpeg", 0, b"\xff\xd8\xff"),
    ("image/webp", 8, b"WEBP"),
)
EXTENSIONS: Final = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


@dataclass(frozen=True)
class CheckedImage:
    media_type: str
    width: int
    height: int
    size: int

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.media_type]


def check_image_bytes(field: str, data: bytes) -> CheckedImage:
    """``data`` as an input image, or ValidationError naming ``field`` and the limit it breaks."""
    if len(data) > IMAGE_MAX_BYTES:
        raise ValidationError(field, f"must be at most {IMAGE_MAX_BYTES // (1024 * 1024)} MB (got {len(data)} bytes)")
    media_type = next(
        (kind for kind, offset, signature in _SIGNATURES if data[offset : offset + len(signature)] == signature), None
    )
    if media_type is None or (media_type == "image/webp" and not data.startswith(b"RIFF")):
        raise ValidationError(field, "must be a JPEG, PNG or WEBP image (judged by its content)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as error:
        raise ValidationError(field, f"is not a readable {media_type.split('/')[1].upper()} image ({error})") from None
    if not (IMAGE_MIN_SIDE <= width <= IMAGE_MAX_SIDE and IMAGE_MIN_SIDE <= height <= IMAGE_MAX_SIDE):
        raise ValidationError(
            field, f"must be {IMAGE_MIN_SIDE} to {IMAGE_MAX_SIDE} pixels on each side (got {width}x{height})"
        )
    return CheckedImage(media_type=media_type, width=width, height=height, size=len(data))
