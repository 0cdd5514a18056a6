"""Result downloads, tried as an attacker would: redirects inward, forged hosts, slow drips.

The only server that receives traffic is a file server on 127.0.0.1. A refusal is proven by what the
code did not connect to: every ``socket.connect`` the process makes is recorded through an audit hook,
and a refused destination must never appear there.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pydantic import SecretStr

from config.settings import DownloadSettings, HttpSettings, S3Settings
from tests.conftest import S3_TEST_CREDENTIALS
from workers.storage import BadResult, Storage, StorageError, TransferError
from workers.storage.destinations import AddressPolicy, HostAllowlist

pytestmark = pytest.mark.integration

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 64
_connects: list[tuple[str, int]] = []
#: Only the test's own thread is watched (the downloads run in it): other threads of the test session
#: (servers, clients of other fixtures) connect as they please.
_watched = threading.get_ident()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect" and threading.get_ident() == _watched:
        address = args[1]
        if isinstance(address, tuple) and len(address) >= 2:
            _connects.append((str(address[0]), int(address[1])))


sys.addaudithook(_audit)


class Files(BaseHTTPRequestHandler):
    """``/video``; ``/octet``; ``/redirect?to=URL`` (302); ``/drip`` (1 byte every 0.3 s); ``/drip-headers``
    (its status line and headers 1 byte every 0.3 s, each byte resetting a read timeout)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query.removeprefix("to="))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path in ("/video", "/octet"):
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4" if path == "/video" else "application/octet-stream")
            self.send_header("Content-Length", str(len(VIDEO)))
            self.end_headers()
            self.wfile.write(VIDEO)
        elif path == "/drip-headers":
            head = f"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: {len(VIDEO)}\r\n\r\n".encode()
            try:
                for i in range(len(head)):
                    self.wfile.write(head[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.3)
                self.wfile.write(VIDEO)
            except OSError:
                pass  # the store gave up on us: what the test wants
            self.close_connection = True
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(len(VIDEO)))
            self.end_headers()
            try:
                for i in range(len(VIDEO)):
                    self.wfile.write(VIDEO[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.3)
            except OSError:
                self.close_connection = True  # the store gave up on us: what the test wants
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture(scope="module")
def files() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def storage(endpoint: str, bucket: str, files_url: str | None = None, **downloads: Any) -> Storage:
    """A storage allowed to fetch from the file server at ``files_url`` (its host and port alone)."""
    hosts = [files_url.removeprefix("http://")] if files_url else []
    options: dict[str, Any] = {"result_hosts": hosts, "allow_networks": ["127.0.0.1/32"], **downloads}
    s3 = S3Settings(
        bucket=bucket,
        endpoint_url=endpoint,
        access_key_id=SecretStr(S3_TEST_CREDENTIALS["aws_access_key_id"]),
        secret_access_key=SecretStr(S3_TEST_CREDENTIALS["aws_secret_access_key"]),
        part_size_mb=5,
    )
    http = HttpSettings(connect_timeout_s=2, download_read_timeout_s=10)
    return Storage(s3, http, downloads=DownloadSettings(**options))


def store(target: Storage, url: str) -> Any:
    return target.store(
        job_id="job1",
        task_id="task1",
        account="main",
        url=url,
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
        prompt_sha256="0" * 64,
        sidecar={"job_id": "job1"},
        first_attempt=True,
    )


def refused(target: Storage, url: str) -> StorageError:
    _connects.clear()
    with pytest.raises(BadResult) as caught:
        store(target, url)
    assert not caught.value.retryable
    return caught.value


def test_an_allowed_file_host_is_stored(s3_endpoint, s3_bucket, files):
    assert store(storage(s3_endpoint, s3_bucket, files), f"{files}/video").size == len(VIDEO)


@pytest.mark.parametrize(
    "inward",
    [
        "http://127.0.0.1:6379/",  # loopback Redis, through the allowed host's redirect
        "http://10.20.30.40/internal",  # a private address
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",  # cloud metadata
        "http://[::1]:6379/",
        "http://0x7f000001:6379/",
        "http://localhost:6379/",
        "http://metadata.google.internal/computeMetadata/v1/",
    ],
)
def test_a_redirect_inward_is_refused_without_connecting(s3_endpoint, s3_bucket, files, inward):
    error = refused(storage(s3_endpoint, s3_bucket, files), f"{files}/redirect?to={inward}")
    assert "not an allowed result host" in str(error) or "invalid port" in str(error)
    # The only connection made was to the file server that answered with the redirect.
    assert set(_connects) == {("127.0.0.1", int(files.rsplit(":", 1)[1]))}


def test_an_allowed_name_that_resolves_inward_is_refused_before_connecting(s3_endpoint, s3_bucket, files):
    # "localhost" is on the host list, but resolves to loopback, which is not an allowed network here.
    port = files.rsplit(":", 1)[1]
    target = storage(s3_endpoint, s3_bucket, result_hosts=[f"localhost:{port}"], allow_networks=[])
    error = refused(target, f"http://localhost:{port}/video")
    assert "may not come from" in str(error)
    assert all(p != int(port) for _, p in _connects)  # the file server was never dialled


@pytest.mark.parametrize("host", ["169.254.169.254", "10.20.30.40", "100.64.0.1", "224.0.0.1"])
def test_an_allowed_address_literal_outside_public_space_is_refused(s3_endpoint, s3_bucket, host):
    target = storage(s3_endpoint, s3_bucket, result_hosts=[host, f"{host}:80"], allow_networks=[])
    refused(target, f"http://{host}/video")
    assert all(address != host for address, _ in _connects)


def test_errors_say_nothing_about_what_listens_inside(s3_endpoint, s3_bucket, files):
    # A closed and an open loopback port give the same answer: nothing was connected to.
    target = storage(s3_endpoint, s3_bucket, files)
    open_port = refused(target, f"{files}/redirect?to=http://127.0.0.2:{files.rsplit(':', 1)[1]}/")
    closed_port = refused(target, f"{files}/redirect?to=http://127.0.0.2:9/")

    def shape(error: StorageError) -> str:
        return re.sub(r":\d+", ":PORT", str(error))

    assert shape(open_port) == shape(closed_port)


def test_a_result_that_is_not_a_video_is_refused(s3_endpoint, s3_bucket, files):
    error = refused(storage(s3_endpoint, s3_bucket, files), f"{files}/octet")
    assert "application/octet-stream" in str(error) and "downloads.content_types" in str(error)
    relaxed = storage(s3_endpoint, s3_bucket, files, content_types=["video/*", "application/octet-stream"])
    assert store(relaxed, f"{files}/octet").size == len(VIDEO)


def test_a_slow_drip_gives_up_within_the_throughput_window(s3_endpoint, s3_bucket, files):
    target = storage(s3_endpoint, s3_bucket, files, min_bytes_per_s=1000, throughput_window_s=1.0)
    started = time.monotonic()
    with pytest.raises(TransferError) as caught:
        store(target, f"{files}/drip")
    assert caught.value.retryable and "too slow" in str(caught.value)
    assert time.monotonic() - started < 8  # 1 s window, a few checks a second, far below the read timeout


def test_a_host_that_drips_its_headers_is_given_up_at_the_headers_deadline(s3_endpoint, s3_bucket, files):
    """Each header byte resets the read timeout (10 s here): only a deadline from the request's start
    ends it. It used to start after the headers, so such a host held a store worker until its time limit."""
    target = storage(s3_endpoint, s3_bucket, files, headers_deadline_s=1.5)
    started = time.monotonic()
    with pytest.raises(TransferError) as caught:
        store(target, f"{files}/drip-headers")
    took = time.monotonic() - started
    assert "no response headers within 1.5 s" in str(caught.value)
    assert took < 12, took  # the whole head takes 20 s to drip


def test_a_transfer_past_its_deadline_is_given_up(s3_endpoint, s3_bucket, files):
    target = storage(s3_endpoint, s3_bucket, files, min_bytes_per_s=0, deadline_s=1.0)
    with pytest.raises(TransferError) as caught:
        store(target, f"{files}/drip")
    assert "deadline" in str(caught.value)


# -- the policies alone --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("fd00:ec2::254", False),
        ("fe80::1%eth0", False),
        ("::ffff:127.0.0.1", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.251", False),
        # IPv6 forms that carry an internal IPv4 address to a gateway or tunnel that forwards to it.
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", False),  # 6to4 of the metadata address
        ("2002:5db8:d822::1", True),  # 6to4 of a public address
        ("::7f00:1", False),  # IPv4-compatible 127.0.0.1
        ("::a00:1", False),  # IPv4-compatible 10.0.0.1
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("64:ff9b::5db8:d822", True),  # NAT64 of a public address
        ("64:ff9b:1::a00:1", False),  # local-use NAT64: its layout is the operator's
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # Teredo whose client is 127.0.0.1
    ],
)
def test_only_public_addresses_are_allowed_by_default(address, allowed):
    assert AddressPolicy().allows(address) is allowed


def test_allowed_networks_open_exactly_themselves():
    policy = AddressPolicy.of(["127.0.0.0/8"])
    assert policy.allows("127.0.0.1") and policy.allows("::ffff:127.0.0.1")
    assert not policy.allows("10.0.0.1") and not policy.allows("::1")


def test_host_patterns_match_names_under_a_domain_only():
    hosts = HostAllowlist.of(["*.aiquickdraw.com", "files.example.org"])
    assert hosts.allows("tempfile.aiquickdraw.com", 443) and hosts.allows("A.B.AIQUICKDRAW.COM.", 80)
    assert hosts.allows("files.example.org", 443)
    assert not hosts.allows("aiquickdraw.com.evil.net", 443)
    assert not hosts.allows("evilaiquickdraw.com", 443)
    assert not hosts.allows("sub.files.example.org", 443)


def test_a_host_without_a_port_allows_the_web_ports_only():
    hosts = HostAllowlist.of(["files.example.org", "127.0.0.1:8900", "[::1]:8900"])
    assert hosts.allows("files.example.org", 443) and not hosts.allows("files.example.org", 6379)
    assert hosts.allows("127.0.0.1", 8900) and not hosts.allows("127.0.0.1", 6379)
    assert not hosts.allows("127.0.0.1", 80)
    assert hosts.allows("::1", 8900)
