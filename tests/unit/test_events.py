"""Event filtering and stream id order (core.events)."""

from __future__ import annotations

from core.events import Event, older, valid_event_id


def event(job: str | None = "j1", batch: str | None = "b1", owner: str | None = "acme") -> Event:
    fields = {
        "type": "job.stored" if job else "batch.completed",
        "job": job or "",
        "batch": batch or "",
        "owner": owner or "",
        "at": "1733000000.5",
    }
    return Event.of("1733000000500-0", fields)


def test_filters_by_batch_job_and_owner():
    assert event().matches(batch=None, job=None, owner=None)
    assert event().matches(batch="b1", job="j1", owner="acme")
    assert not event().matches(batch="b2", job=None, owner=None)
    assert not event().matches(batch=None, job="j2", owner=None)
    assert not event().matches(batch=None, job=None, owner="other")
    assert not event(owner=None).matches(batch=None, job=None, owner="acme")  # a job of no principal
    assert not event(job=None, owner=None).matches(batch="b1", job=None, owner="acme")  # batches: admins only
    assert event(job=None, owner=None).matches(batch="b1", job=None, owner=None)


def test_stream_ids_compare_as_numbers_and_are_checked():
    assert older("999-5", "1000-0") and older("1000-1", "1000-10") and not older("1000-0", "1000-0")
    assert valid_event_id("1733000000500-0") and not valid_event_id("1733000000500") and not valid_event_id("$")
    assert event().to_dict() == {
        "id": "1733000000500-0",
        "type": "job.stored",
        "job_id": "j1",
        "batch_id": "b1",
        "at": 1733000000.5,
    }
