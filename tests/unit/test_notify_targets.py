"""Which endpoints an event goes to, and which secret signs each (workers.notify.targets)."""

from __future__ import annotations

import pytest

from config.settings import load_settings
from core.events import Event
from core.jobs import Job, JobRequest
from workers.notify.targets import secret_for, targets_for

SETTINGS = load_settings(
    api_key="k",
    notify={"signing_secret": "whsec_job"},
    ingress_principals=[
        {
            "name": "acme",
            "token": "acme-token-0123456789abcdef",
            "webhooks": [
                {"url": "https://a.example/all", "secret": "whsec_a1"},
                {"url": "https://a.example/stored", "secret": "whsec_a2", "events": ["job.stored"]},
            ],
        },
        {
            "name": "ops",
            "token": "ops-token-0123456789abcdef",
            "admin": True,
            "webhooks": [{"url": "https://o.example/", "secret": "whsec_o"}],
        },
    ],
)


def event(kind: str, *, job: str | None = "j1", owner: str | None = "acme") -> Event:
    return Event.of("1-0", {"type": kind, "job": job or "", "batch": "b1", "owner": owner or "", "at": "1"})


def job(notify_url: str | None) -> Job:
    return Job.new(JobRequest(prompt="p", owner="acme", notify_url=notify_url), job_id="j1")


def test_a_jobs_event_goes_to_its_notify_url_and_its_principals_endpoints_that_want_it():
    stored = targets_for(event("job.stored"), job("https://me.example/hook"), SETTINGS)
    failed = targets_for(event("job.failed"), job(None), SETTINGS)

    assert [(t.ref, t.url) for t in stored] == [
        ("job", "https://me.example/hook"),
        ("principal:acme:0", "https://a.example/all"),
        ("principal:acme:1", "https://a.example/stored"),
    ]
    assert [t.ref for t in failed] == ["principal:acme:0"]  # the second endpoint wants job.stored only
    assert targets_for(event("job.stored", owner=None), job(None), SETTINGS) == []  # a CLI job: nobody's


def test_a_batch_goes_to_the_admins_endpoints():
    assert [t.ref for t in targets_for(event("batch.completed", job=None, owner=None), None, SETTINGS)] == [
        "principal:ops:0"
    ]


def test_secrets_are_looked_up_by_reference_and_only_for_the_url_still_configured():
    assert secret_for("job", "https://anything/", SETTINGS) == "whsec_job"
    assert secret_for("principal:acme:1", "https://a.example/stored", SETTINGS) == "whsec_a2"
    assert secret_for("principal:acme:1", "https://a.example/moved", SETTINGS) is None
    assert secret_for("principal:acme:7", "https://a.example/all", SETTINGS) is None
    assert secret_for("nonsense", "https://a.example/all", SETTINGS) is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://x.example/", "http:// or https://"),
        ("https://user:pw@x.example/", "user name or password"),
        ("https://x.example:99999/", "invalid port"),
        ("https://" + "a" * 2050, "at most 2048"),
    ],
)
def test_a_bad_notify_url_is_refused_naming_the_field(url: str, message: str):
    from core.errors import ValidationError

    with pytest.raises(ValidationError) as refused:
        JobRequest(prompt="p", notify_url=url).validate()
    assert refused.value.field == "notify_url" and message in refused.value.message


def test_a_principals_budget_warning_goes_to_it_and_an_account_or_everyones_to_the_admins():
    def warned(owner: str | None, kind: str = "budget.warning") -> list[str]:
        fields = {"type": kind, "job": "", "batch": "", "owner": owner or "", "at": "1", "budget": "principal_day"}
        return [t.ref for t in targets_for(Event.of("2-0", fields), None, SETTINGS)]

    assert warned("acme") == ["principal:acme:0"]
    assert warned(None) == ["principal:ops:0"]  # everyone's daily cap, or the operator's own budget
    assert warned(None, "account.low_balance") == ["principal:ops:0"]
    details = Event.of("3-0", {"type": "budget.warning", "owner": "acme", "at": "1", "limit": "100.00", "used": "80"})
    assert details.to_dict()["limit"] == "100.00" and details.matches(batch=None, job=None, owner="acme")
