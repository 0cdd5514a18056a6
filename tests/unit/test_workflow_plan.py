"""Workflow graphs and what a parent's end does to a waiting child, as pure logic."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import ValidationError
from core.jobs import Job, JobState
from core.release import _verdict
from core.workflows import node_job_id, plan, state_from

DAY = 86400.0


def job(state: JobState, **fields: Any) -> Job:
    return Job(id=fields.pop("id", "p" * 32), state=state, prompt="", **fields)


def stored_image(**fields: Any) -> Job:
    return job(
        JobState.STORED,
        model="text-to-image",
        account="acct1",
        task_id="task-1",
        result_urls=["u0", "u1", "u2", "u3"],
        timestamps={"stored": 1000.0},
        **fields,
    )


def child(model: str = "image-to-video", **input: Any) -> Job:
    return job(JobState.WAITING, id="c" * 32, model=model, input={"parent": "p" * 32, **input})


def test_a_stored_parent_pins_the_child_to_its_account_with_what_it_made() -> None:
    verdict = _verdict(stored_image(), "p" * 32, child(index=3), 1000.0 + 60, 14 * DAY)
    assert isinstance(verdict, Job) and (verdict.pin, verdict.parent_output) == ("acct1", "image")


@pytest.mark.parametrize(
    ("parent", "kid", "now", "reason"),
    [
        (None, child(index=0), 2000.0, "parent_failed"),
        (job(JobState.FAILED, reason="generation_failed"), child(index=0), 2000.0, "parent_failed"),
        (job(JobState.EXPIRED), child(index=0), 2000.0, "parent_failed"),
        (job(JobState.CANCELED), child(index=0), 2000.0, "parent_canceled"),
        (stored_image(), child(index=0), 1000.0 + 15 * DAY, "parent_too_old"),
        (stored_image(), child(index=4), 2000.0, "parent_output_missing"),
        (stored_image(), child("extend", extend_times="6"), 2000.0, "parent_output_missing"),
    ],
)
def test_a_parent_that_cannot_be_used_fails_the_child_saying_why(
    parent: Job | None, kid: Job, now: float, reason: str
) -> None:
    verdict = _verdict(parent, "p" * 32, kid, now, 14 * DAY)
    assert isinstance(verdict, tuple) and verdict[0] == reason, verdict
    assert "p" * 32 in verdict[1]


def test_plan_orders_parents_first_and_names_bad_nodes() -> None:
    ordered = plan(
        [
            {"name": "ext", "model": "extend", "parent": "vid"},
            {"name": "vid", "model": "image-to-video", "parent": "img"},
            {"name": "img", "model": "text-to-image", "prompt": "x"},
            {"name": "other", "model": "upscale", "parent": "f" * 32},  # a job outside the workflow
        ],
        max_nodes=10,
    )
    assert [node.name for node in ordered] == ["img", "other", "vid", "ext"]
    assert [node.parent_node for node in ordered] == [None, None, "img", "vid"]
    with pytest.raises(ValidationError, match="at most 2"):
        plan([{"name": str(i)} for i in range(3)], max_nodes=2)
    with pytest.raises(ValidationError, match="own parent") as error:
        plan([{"name": "a", "parent": "a"}], max_nodes=2)
    assert error.value.field == "nodes[0].parent"
    with pytest.raises(ValidationError, match="must be an object"):
        plan(["x"], max_nodes=2)


def test_states_and_node_ids() -> None:
    assert state_from([JobState.STORED, JobState.WAITING]) == "running"
    assert state_from([JobState.STORED, JobState.STORED]) == "completed"
    assert state_from([JobState.STORED, JobState.FAILED]) == "partly_failed"
    assert state_from([JobState.CANCELED, None]) == "failed"
    assert node_job_id("w1", "a") == node_job_id("w1", "a") != node_job_id("w2", "a")
    assert len(node_job_id("w1", "a")) == 32
