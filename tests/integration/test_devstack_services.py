"""The private services the suite and the demo rely on start, answer and stop."""

from __future__ import annotations

import pytest
import redis

from devstack import services
from tests.conftest import s3_client_for

pytestmark = pytest.mark.integration


def test_private_redis_answers_and_stops_without_leaving_a_process(tmp_path):
    service = services.start_redis(tmp_path)
    assert redis.Redis.from_url(service.url).ping()
    service.stop()
    assert not service.alive()
    assert not services.redis_reachable(service.url)


def test_s3_server_accepts_a_put_and_get(s3_endpoint, s3_bucket):
    client = s3_client_for(s3_endpoint)
    client.put_object(Bucket=s3_bucket, Key="k", Body=b"hello")
    assert client.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"hello"


def test_stack_stops_every_service_on_close(tmp_path):
    with services.LocalStack(tmp_path) as stack:
        url = stack.redis()  # no URL given: a private server
        processes = [service.process for service in stack.services]
        assert services.redis_reachable(url)
    assert all(process.poll() is not None for process in processes)
