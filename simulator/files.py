"""Result files: deterministic pseudo-random MP4-looking bytes and expiring signed URLs.

Byte ``i`` of a task's file depends only on the task id, so a test can compute the expected
sha256 without downloading: block ``k`` (``CHUNK_BYTES`` long) is
``shake_256(f"{task_id}:{k}").digest(CHUNK_BYTES)``, block 0 starts with a 24-byte ``ftyp`` box,
and the concatenation is cut at the requested size.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator

CHUNK_BYTES = 64 * 1024
#: A minimal ISO-BMFF ``ftyp`` box (size 24, brand isom, compatible isom/mp41).
FTYP_BOX = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isommp41"

#: ``/files/<task>/<token>[_<n>].<ext>``: output n (0 when left out) of the task.
FILE_PATH_RE = re.compile(
    r"^/files/(?P<task_id>[0-9a-f]{32})/(?P<token>[0-9]+-[0-9a-f]{32})(_(?P<index>[0-9]))?\.(?P<ext>mp4|png|jpg)$"
)


def iter_chunks(task_id: str, size: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yield the file in chunks of ``chunk_bytes`` (the last may be shorter); bounded memory."""
    if chunk_bytes != CHUNK_BYTES:
        raise ValueError("chunk size is fixed: the content is defined per CHUNK_BYTES block")
    remaining = size
    k = 0
    while remaining > 0:
        block = hashlib.shake_256(f"{task_id}:{k}".encode()).digest(CHUNK_BYTES)
        if k == 0:
            block = FTYP_BOX + block[len(FTYP_BOX) :]
        if remaining < CHUNK_BYTES:
            block = block[:remaining]
        yield block
        remaining -= len(block)
        k += 1


def expected_sha256(task_id: str, size: int) -> str:
    """Hex sha256 of the file the simulator serves for ``task_id`` at ``size`` bytes."""
    h = hashlib.sha256()
    for chunk in iter_chunks(task_id, size):
        h.update(chunk)
    return h.hexdigest()


class UrlSigner:
    """Stateless expiring tokens: ``{expiry_ms}-{hmac(secret, task_id:expiry_ms)[:32]}``."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _sig(self, task_id: str, expires_ms: int) -> str:
        msg = f"{task_id}:{expires_ms}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()[:32]

    def token(self, task_id: str, expires_at: float) -> str:
        expires_ms = int(expires_at * 1000)
        return f"{expires_ms}-{self._sig(task_id, expires_ms)}"

    def path(self, task_id: str, expires_at: float, index: int = 0, ext: str = "mp4") -> str:
        suffix = f"_{index}" if index else ""
        return f"/files/{task_id}/{self.token(task_id, expires_at)}{suffix}.{ext}"

    def check(self, task_id: str, token: str, now: float) -> str:
        """Return ``"ok"``, ``"expired"`` or ``"invalid"``."""
        expires_s, _, sig = token.partition("-")
        try:
            expires_ms = int(expires_s)
        except ValueError:
            return "invalid"
        if not hmac.compare_digest(sig, self._sig(task_id, expires_ms)):
            return "invalid"
        return "ok" if now * 1000 < expires_ms else "expired"
