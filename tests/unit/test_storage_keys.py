"""Object keys, URL redaction, storage error classes and the hashing/counting reader (pure, no servers)."""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from config.storage import DEFAULT_KEY_TEMPLATE
from core.errors import ImagineQError
from workers.storage import (
    BadResult,
    ResultGone,
    ResultTooLarge,
    StorageError,
    TransferError,
    object_key,
    redact_url,
    sidecar_key,
)
from workers.streams import HashingReader, LengthMismatch, TooManyBytes

WHEN = datetime(2025, 3, 7, 9, 5, tzinfo=UTC)


def chunks_of(data: bytes, size: int) -> Iterator[bytes]:
    """``data`` as a stream read ``size`` bytes at a time, like a socket would deliver it."""
    return iter(functools.partial(io.BytesIO(data).read, size), b"")


# -- object_key -------------------------------------------------------------------------------------


def test_default_template_zero_pads_the_date():
    key = object_key(DEFAULT_KEY_TEMPLATE, job_id="j1", task_id=None, account=None, when=WHEN)
    assert key == "videos/2025/03/07/j1.mp4"


def test_every_field_is_filled():
    template = "{account}/{yyyy}-{mm}-{dd}/{task_id}/{job_id}.mp4"
    key = object_key(template, job_id="job-9", task_id="abc123", account="main", when=WHEN)
    assert key == "main/2025-03-07/abc123/job-9.mp4"


def test_date_is_the_utc_date_and_naive_times_are_utc():
    late_evening_west = datetime(2024, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert (
        object_key("{yyyy}/{mm}/{dd}/{job_id}", job_id="j", task_id=None, account=None, when=late_evening_west)
        == "2025/01/01/j"
    )
    naive = datetime(2024, 1, 2, 23, 59)
    assert object_key("{yyyy}/{mm}/{dd}/{job_id}", job_id="j", task_id=None, account=None, when=naive) == "2024/01/02/j"


def test_a_field_the_template_needs_must_be_present():
    with pytest.raises(ValueError, match="task_id"):
        object_key("{task_id}/{job_id}", job_id="j", task_id=None, account=None, when=WHEN)


def test_unused_missing_fields_are_fine():
    assert object_key("{job_id}", job_id="j", task_id=None, account=None, when=WHEN) == "j"


@pytest.mark.parametrize("bad", ["a/b", "..", ".", "", "sp ace", "x\n"])
def test_values_must_be_safe_path_segments(bad):
    with pytest.raises(ValueError, match="safe"):
        object_key("{task_id}/{job_id}", job_id="j", task_id=bad, account=None, when=WHEN)


def test_sidecar_sits_next_to_the_video():
    assert sidecar_key("videos/2025/03/07/j1.mp4") == "videos/2025/03/07/j1.json"
    assert sidecar_key("raw/j1") == "raw/j1.json"


# -- URL redaction ----------------------------------------------------------------------------------


def test_redacted_url_loses_query_fragment_and_credentials():
    url = "https://user:pw@cdn.example.com:8443/files/a.mp4?X-Amz-Signature=secret&token=t#frag"
    assert redact_url(url) == "https://cdn.example.com:8443/files/a.mp4"


def test_errors_show_the_url_without_its_query():
    error = ResultGone("gone", url="https://cdn.example.com/a.mp4?sig=secret", status=403)
    assert "secret" not in str(error)
    assert "HTTP 403" in str(error) and "cdn.example.com/a.mp4" in str(error)


# -- error classes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason", "retryable"),
    [
        (ResultGone("x"), "expired", False),
        (ResultTooLarge("x"), "too_large", False),
        (BadResult("x"), "bad_result", False),
        (BadResult("x", retryable=True), "bad_result", True),
        (TransferError("x"), "transfer", True),
    ],
)
def test_error_reason_and_retryable_come_from_the_class(error, reason, retryable):
    assert isinstance(error, StorageError) and isinstance(error, ImagineQError)
    assert (error.reason, error.retryable) == (reason, retryable)


# -- HashingReader ----------------------------------------------------------------------------------


def test_reader_hashes_and_counts_everything():
    data = bytes(range(256)) * 1000
    reader = HashingReader(chunks_of(data, 1000), max_bytes=len(data), expected_bytes=len(data))
    out = b"".join(iter(lambda: reader.read(4096), b""))
    assert out == data
    assert reader.bytes_read == len(data)
    assert reader.hexdigest() == hashlib.sha256(data).hexdigest()
    assert reader.eof


def test_reads_are_full_sized_until_the_end():
    """s3transfer turns each read into a multipart part: a short read would be an undersized part."""
    data = b"x" * 10_000
    reader = HashingReader(chunks_of(data, 7), max_bytes=10**6)
    sizes = [len(part) for part in iter(lambda: reader.read(3000), b"")]
    assert sizes == [3000, 3000, 3000, 1000]


def test_read_all_and_empty_chunks():
    reader = HashingReader(iter([b"ab", b"", b"cd", b"e"]), max_bytes=10)
    assert reader.read(1) == b"a"
    assert reader.read() == b"bcde"
    assert reader.read() == b""
    assert reader.bytes_read == 5


def test_empty_stream():
    reader = HashingReader(iter([]), max_bytes=10, expected_bytes=0)
    assert reader.read(5) == b""
    assert reader.hexdigest() == hashlib.sha256(b"").hexdigest()


def test_cap_stops_the_stream_as_soon_as_it_is_crossed():
    pulled: list[int] = []

    def source() -> Iterator[bytes]:
        for i in range(100):
            pulled.append(i)
            yield b"y" * 100

    reader = HashingReader(source(), max_bytes=1000)
    with pytest.raises(TooManyBytes):
        while reader.read(64):
            pass
    assert len(pulled) == 11  # the chunk that crossed the cap, and not one more


def test_exactly_the_cap_is_allowed():
    reader = HashingReader(chunks_of(b"z" * 1000, 100), max_bytes=1000)
    assert len(reader.read()) == 1000


def test_short_body_is_a_length_mismatch_at_the_end():
    reader = HashingReader(chunks_of(b"q" * 900, 100), max_bytes=10**6, expected_bytes=1000)
    with pytest.raises(LengthMismatch) as caught:
        while reader.read(300):
            pass
    assert (caught.value.expected, caught.value.actual) == (1000, 900)


def test_long_body_is_a_length_mismatch_as_soon_as_it_overflows():
    reader = HashingReader(chunks_of(b"q" * 1100, 100), max_bytes=10**6, expected_bytes=1000)
    with pytest.raises(LengthMismatch):
        reader.read()


def test_reader_is_a_readable_non_seekable_file():
    reader = HashingReader(iter([b""]), max_bytes=1)
    assert reader.readable() and not reader.seekable()
