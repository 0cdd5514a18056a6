"""Storage against a real S3-compatible server (SeaweedFS) and a real HTTP file server on a free port."""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from config.settings import HttpSettings, S3Settings
from tests.conftest import S3_TEST_CREDENTIALS, local_files, s3_client_for
from workers.storage import (
    BadResult,
    ResultGone,
    ResultTooLarge,
    Storage,
    StorageError,
    TransferError,
    build_s3_client,
)

pytestmark = pytest.mark.integration

MB = 1024 * 1024
BLOCK = 64 * 1024
CREATED_AT = datetime(2025, 3, 7, 12, 0, tzinfo=UTC)
PROMPT_SHA = hashlib.sha256(b"a cat surfing").hexdigest()


def content(size: int) -> Iterator[bytes]:
    """Deterministic bytes: block k is sha256(k) repeated, cut at ``size``; never held whole."""
    k = 0
    remaining = size
    while remaining > 0:
        block = (hashlib.sha256(str(k).encode()).digest() * (BLOCK // 32))[:remaining]
        yield block
        remaining -= len(block)
        k += 1


def sha256_of(size: int) -> str:
    digest = hashlib.sha256()
    for block in content(size):
        digest.update(block)
    return digest.hexdigest()


# -- the file server --------------------------------------------------------------------------------

ROUTE = re.compile(r"^/(?P<kind>[a-z0-9-]+)(?:/(?P<size>\d+))?(?:\.mp4)?$")


@dataclass
class FileServer:
    """Paths (``N`` = size in bytes; query strings are ignored, as presigned signatures would be):

    ``/files/N.mp4`` video/mp4 with Content-Length; ``/chunked/N.mp4`` chunked, no length;
    ``/short/N.mp4`` announces N, sends half, hangs up; ``/expired/N.mp4`` 403;
    ``/html`` a text/html page; ``/ftp-redirect`` 302 to ``ftp://``; ``/redirect/N.mp4`` 302 to
    ``/files/N.mp4``; ``/status/CODE`` that status.
    """

    base_url: str
    hits: Counter[str] = field(default_factory=Counter)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


def _handler(server: FileServer, lock: threading.Lock) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            with lock:
                server.hits[path] += 1
            match = ROUTE.match(path)
            kind = match["kind"] if match else ""
            size = int(match["size"]) if match and match["size"] else 0
            if kind == "files":
                self._send_body(size, announced=size)
            elif kind == "chunked":
                self._send_chunked(size)
            elif kind == "short":
                self._send_body(size // 2, announced=size)
                self.close_connection = True
            elif kind == "expired":
                self._send_simple(403, "application/xml", b"<Error><Code>AccessDenied</Code></Error>")
            elif kind == "html":
                self._send_simple(200, "text/html; charset=utf-8", b"<html><body>Sign in</body></html>")
            elif kind == "ftp-redirect":
                self._redirect("ftp://files.example.com/video.mp4")
            elif kind == "redirect":
                self._redirect(f"/files/{size}.mp4?sig=abc")
            elif kind == "status":
                self._send_simple(size, "text/plain", b"status")
            else:
                self._send_simple(404, "text/plain", b"no such path")

        def _send_body(self, size: int, *, announced: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(announced))
            self.end_headers()
            for block in content(size):
                self.wfile.write(block)

        def _send_chunked(self, size: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for block in content(size):
                    self.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client hung up (size cap): expected

        def _send_simple(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    lock = threading.Lock()
    server = FileServer(base_url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server, lock))
    httpd.daemon_threads = True
    server.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, name="file-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


# -- storage fixtures -------------------------------------------------------------------------------


def s3_settings(endpoint: str, bucket: str, **overrides: Any) -> S3Settings:
    return S3Settings(
        bucket=bucket,
        endpoint_url=endpoint,
        access_key_id=SecretStr(S3_TEST_CREDENTIALS["aws_access_key_id"]),
        secret_access_key=SecretStr(S3_TEST_CREDENTIALS["aws_secret_access_key"]),
        part_size_mb=5,
        **overrides,
    )


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    return s3_client_for(s3_endpoint)


@pytest.fixture
def make_storage(s3_endpoint: str, s3_bucket: str, file_server: FileServer) -> Iterator[Any]:
    made: list[Storage] = []

    def _make(**overrides: Any) -> Storage:
        http = HttpSettings(connect_timeout_s=2, read_timeout_s=10, download_read_timeout_s=10)
        storage = Storage(
            s3_settings(s3_endpoint, s3_bucket, **overrides), http, downloads=local_files(file_server.base_url)
        )
        made.append(storage)
        return storage

    try:
        yield _make
    finally:
        for storage in made:
            storage.close()


def store(storage: Storage, url: str, job_id: str = "job1", **kwargs: Any) -> Any:
    return storage.store(
        job_id=job_id,
        task_id=kwargs.pop("task_id", "task1"),
        account="main",
        url=url,
        created_at=CREATED_AT,
        prompt_sha256=PROMPT_SHA,
        sidecar=kwargs.pop("sidecar", {"job_id": job_id, "prompt": "a cat surfing", "state": "downloading"}),
        **kwargs,
    )


def versions_of(s3: Any, bucket: str, key: str) -> int:
    return sum(1 for v in s3.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", []) if v["Key"] == key)


NOT_IMPLEMENTED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>NotImplemented</Code>'
    b"<Message>A header you provided implies functionality that is not implemented</Message></Error>"
)


class AnswerLosingProxy:
    """An HTTP proxy on loopback in front of S3 that forwards every request (its Host header kept, so
    signatures hold) and, for the first request ``lose(method, path)`` picks, lets S3 act on it but
    hangs up instead of passing the answer back: a request that landed, its answer lost. With
    ``no_conditions``, it answers a conditional request 501 NotImplemented itself, as an S3 server
    without conditional writes does."""

    def __init__(self, upstream: str, lose: Any = None, *, no_conditions: bool = False) -> None:
        self.upstream = upstream.split("://", 1)[1]
        self.lose = lose or (lambda method, path: False)
        self.no_conditions = no_conditions
        self.refused = 0
        self.lost = 0
        self.requests: Counter[str] = Counter()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests[self.command] += 1
                if proxy.no_conditions and "If-None-Match" in self.headers:
                    proxy.refused += 1
                    self.send_response(501)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(NOT_IMPLEMENTED)))
                    self.end_headers()
                    self.wfile.write(NOT_IMPLEMENTED)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=10)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        if name.lower() != "expect":
                            conn.putheader(name, value)
                    conn.endheaders(body)
                    answer = conn.getresponse()
                    data = answer.read()
                finally:
                    conn.close()
                if proxy.lost == 0 and proxy.lose(self.command, self.path.split("?", 1)[0]):
                    proxy.lost += 1
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in {"transfer-encoding", "connection", "content-length"}:
                        self.send_header(name, value)
                # A HEAD answer announces the object's length, with no body
                self.send_header(
                    "Content-Length", answer.getheader("Content-Length", "0") if not data else str(len(data))
                )
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="s3-proxy", daemon=True)

    def __enter__(self) -> AnswerLosingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def keys_in(s3: Any, bucket: str) -> list[str]:
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def assert_nothing_left(s3: Any, bucket: str) -> None:
    assert keys_in(s3, bucket) == []
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# -- the happy path ---------------------------------------------------------------------------------


def test_a_20_mb_result_is_streamed_into_s3_in_parts_with_metadata_and_sidecar(
    make_storage, file_server, s3, s3_bucket
):
    # Given a 20 MB video behind a presigned-looking URL and 5 MB parts
    size = 20 * MB
    url = file_server.url(f"/files/{size}.mp4?X-Amz-Signature=secret")
    storage = make_storage()

    # When it is stored
    stored = store(storage, url)

    # Then the object holds exactly those bytes, uploaded in 4 parts, typed and labelled
    key = "videos/2025/03/07/job1.mp4"
    assert stored.uri == f"s3://{s3_bucket}/{key}"
    assert (stored.bucket, stored.key, stored.size, stored.created) == (s3_bucket, key, size, True)
    assert stored.sha256 == sha256_of(size)
    obj = s3.get_object(Bucket=s3_bucket, Key=key)
    assert obj["ContentType"] == "video/mp4"
    assert obj["ETag"].strip('"').endswith("-4")
    assert obj["Metadata"] == {"job-id": "job1", "task-id": "task1", "prompt-sha256": PROMPT_SHA}
    digest = hashlib.sha256()
    for chunk in obj["Body"].iter_chunks(MB):
        digest.update(chunk)
    assert digest.hexdigest() == stored.sha256

    # And the sidecar next to it carries the job record plus where and what was stored
    side = s3.get_object(Bucket=s3_bucket, Key="videos/2025/03/07/job1.json")
    assert side["ContentType"] == "application/json"
    document = json.loads(side["Body"].read())
    assert document["prompt"] == "a cat surfing"
    assert document["s3_uri"] == stored.uri
    assert (document["size"], document["sha256"], document["task_id"]) == (size, stored.sha256, "task1")
    assert datetime.fromisoformat(document["stored_at"]).tzinfo is not None
    assert sorted(keys_in(s3, s3_bucket)) == ["videos/2025/03/07/job1.json", key]


def test_a_small_result_goes_up_in_one_put(make_storage, file_server, s3, s3_bucket):
    stored = store(make_storage(), file_server.url("/files/1000.mp4"), task_id=None)
    assert (stored.size, stored.sha256) == (1000, sha256_of(1000))
    obj = s3.head_object(Bucket=s3_bucket, Key=stored.key)
    assert "-" not in obj["ETag"]
    # Its own sha256 and size ride along: the bytes were in hand before the PUT
    assert obj["Metadata"] == {"job-id": "job1", "prompt-sha256": PROMPT_SHA, "sha256": stored.sha256, "size": "1000"}


def test_a_second_store_returns_the_object_without_downloading(make_storage, file_server):
    storage = make_storage()
    path = f"/files/{6 * MB}.mp4"
    first = store(storage, file_server.url(path))

    second = store(storage, file_server.url(path))

    assert second == dataclasses.replace(first, created=False)
    assert file_server.hits[path] == 1


def test_a_multipart_video_without_its_sidecar_is_downloaded_again(make_storage, file_server, s3, s3_bucket):
    # Given a store that died between a multipart video and its sidecar
    storage = make_storage()
    path = f"/files/{6 * MB}.mp4"
    stored = store(storage, file_server.url(path))
    s3.delete_object(Bucket=s3_bucket, Key="videos/2025/03/07/job1.json")

    again = store(storage, file_server.url(path))

    assert again.created and again.sha256 == stored.sha256
    assert file_server.hits[path] == 2


def test_a_single_put_video_without_its_sidecar_is_sealed_not_written_again(make_storage, file_server, s3, s3_bucket):
    # Given a store that died between a single-PUT video and its sidecar, in a versioned bucket
    s3.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    storage = make_storage()
    path = "/files/2000.mp4"
    stored = store(storage, file_server.url(path))
    s3.delete_object(Bucket=s3_bucket, Key="videos/2025/03/07/job1.json")

    again = store(storage, file_server.url(path))

    # Then its own metadata shows it complete: only the sidecar is written, one version of the video
    assert again == dataclasses.replace(stored, created=False)
    assert file_server.hits[path] == 1
    assert versions_of(s3, s3_bucket, stored.key) == 1
    side = json.loads(s3.get_object(Bucket=s3_bucket, Key="videos/2025/03/07/job1.json")["Body"].read())
    assert (side["size"], side["sha256"], side["prompt"]) == (2000, stored.sha256, "a cat surfing")


def test_a_put_whose_answer_is_lost_is_not_written_twice(s3_endpoint, s3, s3_bucket, file_server):
    # Given a link to S3 that loses the answer to the first video PUT (it landed), in a versioned bucket
    s3.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    with AnswerLosingProxy(s3_endpoint, lose=lambda method, path: method == "PUT" and path.endswith(".mp4")) as proxy:
        http = HttpSettings(connect_timeout_s=2, read_timeout_s=10, download_read_timeout_s=10)
        storage = Storage(s3_settings(proxy.url, s3_bucket), http, downloads=local_files(file_server.base_url))
        try:
            # When a small video is stored (the S3 client retries the PUT it got no answer to)
            stored = store(storage, file_server.url("/files/3000.mp4"))
        finally:
            storage.close()
        assert proxy.lost == 1 and proxy.requests["PUT"] >= 3  # the lost PUT, its retry and the sidecar

    # Then the retry found its own bytes there and wrote nothing: one version, the right bytes
    assert versions_of(s3, s3_bucket, stored.key) == 1
    assert stored.sha256 == sha256_of(3000)
    body = s3.get_object(Bucket=s3_bucket, Key=stored.key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == stored.sha256


def test_a_server_without_conditional_writes_gets_plain_puts(s3_endpoint, s3, s3_bucket, file_server, caplog):
    # Given an S3 server that answers If-None-Match with NotImplemented
    with AnswerLosingProxy(s3_endpoint, no_conditions=True) as proxy:
        http = HttpSettings(connect_timeout_s=2, read_timeout_s=10, download_read_timeout_s=10)
        storage = Storage(s3_settings(proxy.url, s3_bucket), http, downloads=local_files(file_server.base_url))
        try:
            # When two small results are stored
            with caplog.at_level("WARNING", logger="workers.storage"):
                first = store(storage, file_server.url("/files/3000.mp4"), job_id="job1")
                second = store(storage, file_server.url("/files/4000.mp4"), job_id="job2")
        finally:
            storage.close()

    # Then the first PUT was refused once, said so, and both went up plainly
    assert proxy.refused == 1
    assert "refuses If-None-Match" in caplog.text
    assert (first.sha256, second.sha256) == (sha256_of(3000), sha256_of(4000))
    assert s3.head_object(Bucket=s3_bucket, Key=second.key)["ContentLength"] == 4000


def test_a_conditional_put_refused_for_another_object_is_a_transfer_error(make_storage, file_server, s3, s3_bucket):
    # Given another job's object lands at the key between the look and the PUT (first_attempt: no look)
    key = "videos/2025/03/07/job1.mp4"
    s3.put_object(Bucket=s3_bucket, Key=key, Body=b"theirs", Metadata={"job-id": "someone-else"})

    with pytest.raises(TransferError, match="another object appeared"):
        store(make_storage(), file_server.url("/files/3000.mp4"), first_attempt=True)

    # Then theirs is untouched until a later attempt looks and replaces it
    assert s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == b"theirs"
    assert store(make_storage(), file_server.url("/files/3000.mp4")).sha256 == sha256_of(3000)


def test_a_same_host_redirect_is_followed(make_storage, file_server):
    stored = store(make_storage(), file_server.url("/redirect/3000.mp4"))
    assert stored.sha256 == sha256_of(3000)
    assert file_server.hits["/files/3000.mp4"] == 1


def test_chunked_results_without_a_length_are_stored(make_storage, file_server):
    size = 7 * MB + 123
    stored = store(make_storage(), file_server.url(f"/chunked/{size}.mp4"))
    assert (stored.size, stored.sha256) == (size, sha256_of(size))


# -- refresh and expiry -----------------------------------------------------------------------------


def test_an_expired_url_is_refreshed_once_and_stored(make_storage, file_server):
    asked: list[str] = []
    expired = file_server.url("/expired/5000.mp4?sig=old")

    def refresh(url: str) -> str:
        asked.append(url)
        return str(file_server.url("/files/5000.mp4?sig=new"))

    stored = store(make_storage(), expired, refresh=refresh)

    assert asked == [expired]
    assert stored.sha256 == sha256_of(5000)


def test_a_url_still_gone_after_the_refresh_is_result_gone(make_storage, file_server, s3, s3_bucket):
    asked: list[str] = []

    def refresh(url: str) -> str:
        asked.append(url)
        return str(file_server.url("/expired/5000.mp4?sig=new"))

    with pytest.raises(ResultGone) as caught:
        store(make_storage(), file_server.url("/expired/5000.mp4?sig=old"), refresh=refresh)

    assert len(asked) == 1
    assert (caught.value.reason, caught.value.retryable, caught.value.status) == ("expired", False, 403)
    assert "sig=" not in str(caught.value)
    assert_nothing_left(s3, s3_bucket)


def test_a_gone_url_without_a_refresh_is_result_gone(make_storage, file_server):
    with pytest.raises(ResultGone):
        store(make_storage(), file_server.url("/status/410"))


# -- refusals ---------------------------------------------------------------------------------------


def test_an_announced_size_over_the_cap_is_refused_before_reading(make_storage, file_server, s3, s3_bucket):
    with pytest.raises(ResultTooLarge) as caught:
        store(make_storage(max_download_bytes=MB), file_server.url(f"/files/{3 * MB}.mp4"))
    assert (caught.value.reason, caught.value.retryable) == ("too_large", False)
    assert_nothing_left(s3, s3_bucket)


def test_streamed_bytes_over_the_cap_abort_the_multipart_upload(make_storage, file_server, s3, s3_bucket):
    # Given no Content-Length, and a cap above one part so the multipart upload has begun
    storage = make_storage(max_download_bytes=12 * MB)

    with pytest.raises(ResultTooLarge):
        store(storage, file_server.url(f"/chunked/{40 * MB}.mp4"))

    assert_nothing_left(s3, s3_bucket)


def test_html_is_not_a_video(make_storage, file_server, s3, s3_bucket):
    with pytest.raises(BadResult) as caught:
        store(make_storage(), file_server.url("/html"))
    assert (caught.value.reason, caught.value.retryable) == ("bad_result", False)
    assert_nothing_left(s3, s3_bucket)


def test_a_redirect_to_ftp_is_refused(make_storage, file_server, s3, s3_bucket):
    with pytest.raises(BadResult, match="non-http"):
        store(make_storage(), file_server.url("/ftp-redirect"))
    assert_nothing_left(s3, s3_bucket)


@pytest.mark.parametrize("url", ["ftp://files.example.com/v.mp4", "file:///etc/passwd", "not a url"])
def test_only_http_urls_are_fetched(make_storage, url):
    with pytest.raises(BadResult, match="not an http"):
        store(make_storage(), url)


def test_a_body_shorter_than_announced_leaves_no_object(make_storage, file_server, s3, s3_bucket):
    # Given 20 MB announced and 10 MB sent: two parts are up when the body ends
    with pytest.raises(BadResult) as caught:
        store(make_storage(), file_server.url(f"/short/{20 * MB}.mp4"))
    assert caught.value.retryable
    assert_nothing_left(s3, s3_bucket)


def test_a_small_short_body_leaves_no_object(make_storage, file_server, s3, s3_bucket):
    with pytest.raises(BadResult) as caught:
        store(make_storage(), file_server.url("/short/4000.mp4"))
    assert caught.value.retryable
    assert_nothing_left(s3, s3_bucket)


def test_a_server_error_is_a_retryable_transfer_error(make_storage, file_server):
    with pytest.raises(TransferError) as caught:
        store(make_storage(), file_server.url("/status/503"))
    assert (caught.value.reason, caught.value.retryable, caught.value.status) == ("transfer", True, 503)


def test_an_unreachable_host_is_a_transfer_error(s3_endpoint, s3_bucket):
    from devstack.services import free_port

    url = f"http://127.0.0.1:{free_port()}"  # an allowed result host with nothing listening
    storage = Storage(
        s3_settings(s3_endpoint, s3_bucket), HttpSettings(connect_timeout_s=2), downloads=local_files(url)
    )
    with pytest.raises(TransferError):
        store(storage, f"{url}/files/1.mp4?sig=secret")


def test_an_unsafe_task_id_in_the_key_is_a_fatal_storage_error(make_storage, file_server):
    storage = make_storage(key_template="{task_id}/{job_id}.mp4")
    with pytest.raises(StorageError) as caught:
        store(storage, file_server.url("/files/10.mp4"), task_id="../x")
    assert not caught.value.retryable


# -- bucket ---------------------------------------------------------------------------------------


def test_ensure_bucket_creates_only_when_allowed(s3_endpoint, s3):
    bucket = f"ensure-{datetime.now(UTC).strftime('%H%M%S%f')}"
    with pytest.raises(StorageError, match="does not exist"):
        Storage(s3_settings(s3_endpoint, bucket), HttpSettings()).ensure_bucket()

    storage = Storage(s3_settings(s3_endpoint, bucket, create_bucket=True), HttpSettings())
    storage.ensure_bucket()
    storage.ensure_bucket()  # idempotent

    s3.head_bucket(Bucket=bucket)


def test_build_s3_client_uses_the_endpoint_and_credentials(s3_endpoint, s3_bucket):
    client = build_s3_client(s3_settings(s3_endpoint, s3_bucket), HttpSettings(read_timeout_s=7))
    assert client.meta.endpoint_url == s3_endpoint
    config: Any = client.meta.config  # the stubs leave these options out
    assert config.read_timeout == 7
    assert config.retries["mode"] == "standard"
    client.put_object(Bucket=s3_bucket, Key="k", Body=b"v")
