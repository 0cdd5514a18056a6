"""Pages in a real headless Chromium, against running processes: Flower's Broker tab and ``/docs``.

Each page may reach loopback only (``tests/integration/browser.py``), and each test saves a screenshot.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
from playwright.sync_api import Browser, expect

from config.celery import QUEUE_SEP, broker_prefix
from core.jobs import Priority
from devstack import services
from devstack.deployment import Deployment, deployment, wait_until
from tests.integration import browser

pytestmark = pytest.mark.integration

FLOWER_USER, FLOWER_PASSWORD = "ops", f"pw-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with browser.browser() as launched:
        yield launched


def queue_length(dep: Deployment, queue: str) -> int:
    """Messages waiting in ``queue``, at every priority, read from Redis directly."""
    client = redis.Redis.from_url(dep.settings.redis_url)
    try:
        prefix = broker_prefix(dep.settings)
        names = [key.decode() for key in client.scan_iter(f"{prefix}{queue}*")]
        lists = [name for name in names if name == f"{prefix}{queue}" or name.startswith(f"{prefix}{queue}{QUEUE_SEP}")]
        return sum(cast(int, client.llen(name)) for name in lists)
    finally:
        client.close()


def broker_rows(session: browser.Session) -> dict[str, int]:
    """Queue name -> messages, as the Broker tab's table shows them."""
    rows: dict[str, int] = {}
    for row in session.page.locator("table tbody tr").all():
        cells = [cell.inner_text().strip() for cell in row.locator("td").all()]
        if len(cells) >= 2 and cells[1].isdigit():
            rows[cells[0]] = int(cells[1])
    return rows


def test_flowers_broker_tab_shows_each_queues_length(tmp_path: Path, chromium: Browser):
    with deployment(tmp_path, workers={}) as dep:
        # Given: jobs waiting in the submit queue at two priorities, before any worker runs.
        jobs = dep.producer.enqueue_many([{"prompt": f"A kite over a beach, take {i}"} for i in range(4)])
        jobs += dep.producer.enqueue_many(
            [{"prompt": f"A night train, take {i}", "priority": Priority.BATCH} for i in range(3)]
        )
        assert queue_length(dep, "submit") == 7
        flower = dep.start_flower(services.free_port(), FLOWER_USER, FLOWER_PASSWORD)

        with browser.session(chromium, http_credentials=(FLOWER_USER, FLOWER_PASSWORD)) as session:
            session.page.goto(f"{flower.url}/broker")

            # Then: the Broker tab names the broker and shows every queue with its length.
            expect(session.page.get_by_text("not supported")).to_have_count(0)
            expect(session.page.locator("table")).to_contain_text("submit")
            assert broker_rows(session) == {"notify": 0, "poll": 0, "store": 0, "submit": 7}
            assert "redis://" in session.page.content()
            session.screenshot("flower-broker")

            # When the workers drain the queue, the tab follows on reload.
            for queue in ("submit", "poll", "store"):
                dep.start_worker(queue, concurrency=2)
            dep.wait_all(jobs, timeout=90)

            def drained() -> bool:
                session.page.reload()
                return broker_rows(session).get("submit") == 0

            wait_until(drained, 30, "the Broker tab to show an empty submit queue")
            assert not session.refused, session.refused


def test_docs_shows_every_operation_with_no_request_off_loopback(tmp_path: Path, chromium: Browser):
    with services.LocalStack(tmp_path) as stack:
        redis_url = stack.redis()
        env = {"IMAGINEQ_REDIS_URL": redis_url, "IMAGINEQ_API_KEY": "sim-key", "IMAGINEQ_DOCS_ENABLED": "true"}
        web = services.start_web(stack, env)
        with browser.session(chromium) as session:
            session.page.goto(f"{web.url}/docs")

            operations = session.page.locator(".opblock-summary")
            expect(operations.first).to_be_visible(timeout=20_000)
            summaries = {re.sub(r"\s+", " ", text).strip() for text in operations.all_inner_texts()}
            assert any(text.startswith("POST /v1/jobs") for text in summaries), summaries
            assert any(text.startswith("GET /v1/jobs/{job_id}") for text in summaries), summaries
            # Expanding an operation shows its parameters (Swagger UI's own script ran).
            operations.first.click()
            expect(session.page.locator(".opblock-body").first).to_be_visible()
            session.screenshot("docs", full_page=False)
            assert not session.refused, session.refused
