"""A read-only file object over a byte-chunk iterator that hashes, counts and caps what passes through.

``upload_fileobj`` reads it part by part (``read(part_size)``), so an HTTP body flows into S3 without
ever being held whole; sha256 and the byte count are known the moment the last byte has been read.
A reader error (cap exceeded, body shorter or longer than announced) propagates out of
``upload_fileobj``, which aborts the multipart upload, so no object is left behind.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from core.errors import ImagineQError


class StreamError(ImagineQError):
    """The stream broke a promise; the storage layer translates these into its own errors."""


class TooManyBytes(StreamError):
    """More than ``max_bytes`` arrived."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"stream exceeds the cap of {max_bytes} bytes")
        self.max_bytes = max_bytes


class LengthMismatch(StreamError):
    """The stream ended after a different number of bytes than announced."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"stream ended after {actual} bytes, {expected} announced")
        self.expected = expected
        self.actual = actual


class HashingReader:
    """``read(n)`` returns exactly ``n`` bytes until the end (s3transfer needs full parts: a short
    read would become an undersized, rejected multipart part).

    Memory: at most one ``n``-byte result plus one source chunk at a time.
    """

    def __init__(self, chunks: Iterable[bytes], *, max_bytes: int, expected_bytes: int | None = None) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._max_bytes = max_bytes
        self._expected_bytes = expected_bytes
        self._pending = b""  # the unread tail of the last source chunk
        self._hash = hashlib.sha256()
        self._count = 0
        self._eof = False

    @property
    def bytes_read(self) -> int:
        """Bytes taken from the source so far (hashed, counted, possibly not yet returned)."""
        return self._count

    @property
    def eof(self) -> bool:
        return self._eof

    def hexdigest(self) -> str:
        """sha256 of every byte taken from the source so far; the whole body's once ``eof`` is true."""
        return self._hash.hexdigest()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def peek(self, size: int) -> bytes:
        """Up to ``size`` of the next bytes without taking them (they are read again by ``read``); fewer
        only at the end, or when the first chunk is shorter."""
        if not self._pending:
            self._next_chunk()
        return self._pending[:size]

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self._read_all()
        parts: list[bytes] = []
        wanted = size
        while wanted > 0:
            if not self._pending and not self._next_chunk():
                break
            piece = self._pending[:wanted]
            self._pending = self._pending[len(piece) :]
            parts.append(piece)
            wanted -= len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_all(self) -> bytes:
        parts = [self._pending]
        self._pending = b""
        while self._next_chunk():
            parts.append(self._pending)
            self._pending = b""
        return b"".join(parts)

    def _next_chunk(self) -> bool:
        """Pull the next non-empty chunk into ``_pending``; False at the end of the source."""
        if self._eof:
            return False
        for chunk in self._chunks:
            if not chunk:
                continue
            self._count += len(chunk)
            if self._count > self._max_bytes:
                raise TooManyBytes(self._max_bytes)
            if self._expected_bytes is not None and self._count > self._expected_bytes:
                raise LengthMismatch(self._expected_bytes, self._count)
            self._hash.update(chunk)
            self._pending = chunk
            return True
        self._eof = True
        if self._expected_bytes is not None and self._count != self._expected_bytes:
            raise LengthMismatch(self._expected_bytes, self._count)
        return False
