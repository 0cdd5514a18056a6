"""``imagineq status``: gathered from a real Redis (and the simulator for credits), rendered without secrets."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from config.settings import Settings, load_settings
from core.jobs import Job, JobState
from devstack import services
from devstack.services import Service
from producers.api import Producer
from producers.status import StatusReader
from producers.status_cli import render
from workers.logs import Redactor

pytestmark = pytest.mark.integration

KEY = "sk-LEAKCHECK-status-5f0c2a9e"


@pytest.fixture
def settings(
    redis_url: str, start_simulator: Callable[..., Service], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Settings:
    monkeypatch.chdir(tmp_path)  # no stray .env
    simulator = start_simulator("--api-key", KEY, "--credits", "42")
    refused = f"http://127.0.0.1:{services.free_port()}"
    return load_settings(
        redis_url=redis_url,
        accounts=[
            {"name": "main", "api_key": KEY, "base_url": simulator.url, "max_creations_per_window": 300},
            {"name": "spare", "api_key": KEY + "-spare", "base_url": refused, "in_progress_margin": 2},
        ],
    )


def test_status_shows_quotas_credits_queues_jobs_and_failures(settings: Settings) -> None:
    # Given: three interactive jobs and one batch job queued, one job holding a slot on main, one failed,
    # main cooling down and spare paused.
    producer = Producer(settings)
    queued = [producer.enqueue(f"prompt {i}") for i in range(3)]
    batch_job = producer.enqueue("a batch line", priority="batch")
    failed = producer.enqueue("doomed")
    jobs, quota = producer.jobs, StatusReader(settings).quota
    assert quota is not None
    assert jobs.transition(failed.id, JobState.SUBMITTING) and jobs.transition(
        failed.id, JobState.FAILED, fields={"reason": "rejected", "error": f"422 prompt refused (key {KEY})"}
    )
    assert quota.acquire_slot(queued[0].id, accounts=["main"]).account == "main"
    quota.cooldown("main", 30)
    quota.pause("spare", "no_credits")

    # When
    reader = StatusReader(settings)
    try:
        status = reader.gather(credits_timeout_s=1.0)
    finally:
        reader.close()

    # Then
    main, spare = status.accounts
    assert (main.account, main.creations_in_window, main.in_progress, main.credits) == ("main", 1, 1, 42)
    assert 29 <= main.cooldown_s <= 30 and main.paused is None
    assert (spare.paused, spare.credits, spare.in_progress_limit) == ("no_credits", None, 28)
    assert spare.credits_error and "not sent" in spare.credits_error
    submit = next(queue for queue in status.queues if queue.queue == "submit")
    assert submit.waiting == {0: 4, 3: 0, 6: 0, 9: 1} and submit.held == 0  # the failed job's message too
    assert status.jobs["queued"] == 4 and status.jobs["failed"] == 1

    # The queued index is ordered by the millisecond of creation: jobs enqueued within the first job's
    # millisecond tie with it (the batch line too, on a fast machine), and any of them is the oldest.
    def created_ms(job: Job) -> int:
        return round(job.created_at * 1_000_000) // 1000  # as the index scores it: whole microseconds, floored

    tied = {job.id for job in [*queued, batch_job] if created_ms(job) == created_ms(queued[0])}
    assert status.oldest_queued_job in tied and status.oldest_queued_age_s is not None
    [failure] = status.failures
    assert (failure.job_id, failure.reason) == (failed.id, "rejected")

    # The screen names everything and prints no key, not even one that slipped into an error text.
    console = Console(file=io.StringIO(), width=200)
    console.print(render(status, Redactor.for_settings(settings)))
    screen = console.file.getvalue()  # type: ignore[attr-defined]
    for expected in ("main", "spare", "no_credits", "unknown (", "rejected", failed.id, "1 / 300"):
        assert expected in screen
    assert KEY not in screen
    producer.close()
