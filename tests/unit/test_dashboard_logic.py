"""The dashboard's pure logic: a job's timeline, a batch's progress, the chart bars and the formats."""

from __future__ import annotations

from core.jobs import Job, JobRequest, JobState
from producers.dashboard import formatting
from producers.dashboard.data import batch_progress, row_of, timeline
from workers.batch.status import BatchStatus


def job_with(timestamps: dict[str, float], state: JobState) -> Job:
    job = Job.new(JobRequest(prompt="p"), created_at=timestamps["queued"])
    job.state, job.timestamps = state, dict(timestamps)
    return job


def test_the_timeline_orders_states_by_time_and_gives_the_time_spent_in_each():
    job = job_with(
        {"stored": 130.0, "queued": 100.0, "generating": 101.5, "submitting": 101.0, "downloading": 128.0},
        JobState.STORED,
    )

    steps = timeline(job)

    assert [step.state for step in steps] == ["queued", "submitting", "generating", "downloading", "stored"]
    assert [step.spent_s for step in steps] == [1.0, 0.5, 26.5, 2.0, None]


def test_a_row_has_the_time_taken_only_once_the_job_has_ended():
    running = job_with({"queued": 100.0, "generating": 105.0}, JobState.GENERATING)
    ended = job_with({"queued": 100.0, "failed": 112.5}, JobState.FAILED)

    assert row_of(running, now=110.0).took_s is None and row_of(running, now=110.0).age_s == 10.0
    assert row_of(ended, now=200.0).took_s == 12.5


def test_batch_progress_counts_stored_failed_canceled_and_waiting():
    status = BatchStatus(
        id="b",
        name="n",
        source="s",
        results="r",
        status="submitted",
        level=9,
        created=10,
        states={"stored": 6, "failed": 1, "canceled": 1},
    )

    progress = batch_progress(status)

    # A canceled job is counted as canceled, never as failed.
    assert (progress["stored"], progress["failed"], progress["canceled"], progress["waiting"]) == (6, 1, 1, 2)
    assert (progress["stored_pct"], progress["done_pct"]) == (60.0, 80.0)
    assert (
        batch_progress(BatchStatus(id="e", name="", source="", results="", status="reading", level=9))["done_pct"]
        == 0.0
    )


def test_chart_bars_scale_to_the_tallest_and_an_empty_chart_draws_nothing_tall():
    bars = formatting.bars([0, 5, 10], width=300, height=40)

    assert [bar["h"] for bar in bars] == [0.0, 20.0, 40.0]
    assert [bar["y"] for bar in bars] == [40.0, 20.0, 0.0]
    assert bars[2]["x"] == 201.0
    assert all(bar["h"] == 0 for bar in formatting.bars([0, 0]))


def test_formats():
    assert formatting.duration(None) == "—" and formatting.duration(2.345) == "2.3 s"
    assert formatting.duration(300) == "5 min" and formatting.duration(7200) == "2.0 h"
    assert formatting.size(10_190) == "10.2 kB" and formatting.size(999) == "999 B"
    assert formatting.short("abcdef", 4) == "abc…" and formatting.short("abc", 4) == "abc"
