"""Pure logic of credits: estimates with the deployment's prices, the batch header, the upstream's consumed
credits in a record, the ledger's day ranges."""

from __future__ import annotations

from typing import Any

import pytest

from config.settings import CreditSettings, ModelSettings, PrincipalSettings, load_settings
from core.credits import CreditPolicy, credits_text, day_start, utc_day
from core.errors import OverBudget, ValidationError
from core.ledger import days_between, parse_day
from workers.batch.lines import batch_header
from workers.upstream.records import TaskRecord


def policy(**changes: Any) -> CreditPolicy:
    return CreditPolicy(load_settings(api_key="k", **changes))


@pytest.mark.parametrize(
    ("model", "values", "parent", "credits"),
    [
        ("text-to-video", {"duration": "6", "resolution": "480p"}, None, 14.4),
        ("text-to-video", {"duration": "15", "resolution": "720p"}, None, 67.5),
        ("image-to-video", {"duration": "10", "resolution": "480p"}, "image", 24.0),
        ("text-to-image", {}, None, 4.0),
        ("image-to-image", {}, None, 4.0),
        ("upscale", {}, "image", 10.0),
        ("upscale", {}, "video", 30.0),
        ("extend", {"extend_times": "10"}, "video", 24.0),
    ],
)
def test_each_model_is_priced_by_its_published_rule(
    model: str, values: dict[str, Any], parent: str | None, credits: float
) -> None:
    assert policy().estimate(model, values, parent) == credits


def test_the_deployment_may_set_its_own_prices() -> None:
    priced = policy(
        models={
            "text-to-video": ModelSettings(credits_per_second={"480p": 2.0, "720p": 5.0}),
            "upscale": ModelSettings(credits_per_task=12.5),
        }
    )
    assert priced.estimate("text-to-video", {"duration": "10", "resolution": "720p"}) == 50.0
    assert priced.estimate("upscale", {}, "video") == 12.5  # its own per-task price wins over the parent rule
    assert priced.estimate("text-to-image", {}) == 4.0


def test_budgets_come_from_the_principal_then_the_defaults() -> None:
    settings = load_settings(
        api_key="k",
        credits=CreditSettings(principal_day=100, principal_month=1000, daily_cap=5000),
        ingress_principals=[
            PrincipalSettings(name="big", token_sha256="a" * 64, budget_day=900),
            PrincipalSettings(name="plain", token_sha256="b" * 64),
        ],
    )
    credits = CreditPolicy(settings)
    assert credits.budgets("big").limits(None) == ["90000", "100000", "", "500000"]
    assert credits.budgets("plain").limits(25.5) == ["10000", "100000", "2550", "500000"]
    assert credits.budgets(None) == credits.budgets("nobody-configured")


def test_an_over_budget_error_names_the_budget_its_limit_and_what_it_holds() -> None:
    error = OverBudget("principal_day", 100.0, 80.0, 14.4, 14.4)
    assert str(error) == (
        "over budget principal_day: limit 100 credits, 80 charged and 14.4 reserved, this needs 14.4 more; "
        "nothing was written"
    )
    assert error.to_dict()["error"] == "over_budget" and error.to_dict()["limit"] == 100.0


def test_amounts_and_days() -> None:
    assert [credits_text(x) for x in (14.4, 45.0, 0.0, 12345.678)] == ["14.4", "45", "0", "12345.68"]
    assert utc_day(day_start("2026-12-05")) == "2026-12-05"
    assert utc_day(day_start("2026-12-05") - 1) == "2026-12-04"
    assert parse_day("3d", today="2026-03-02") == "2026-02-27"
    assert days_between("2026-02-27", "2026-03-01") == ["2026-02-27", "2026-02-28", "2026-03-01"]
    with pytest.raises(ValueError, match="before it starts"):
        days_between("2026-03-01", "2026-02-27")
    with pytest.raises(ValueError, match="at most 400 days"):
        days_between("2020-01-01", "2026-01-01")
    refused = r"--since: must be a UTC day, YYYY-MM-DD, or Nd: N days ago \(got 'yesterday'\)"
    with pytest.raises(ValueError, match=refused):
        parse_day("yesterday", field="--since")


@pytest.mark.parametrize(
    ("line", "header"),
    [
        (b'{"batch": {"budget": 250}}', {"budget": 250.0}),
        (b'{"batch": {}}', {}),
        (b'{"prompt": "a cat"}', None),
        (b'{"batch": "x", "prompt": "y"}', None),
        (b"not json", None),
        (None, None),
    ],
)
def test_a_batch_file_header_sets_its_budget(line: bytes | None, header: dict[str, float] | None) -> None:
    assert batch_header(line) == header


@pytest.mark.parametrize("line", [b'{"batch": {"budget": -5}}', b'{"batch": {"budget": true}}', b'{"batch": {"x": 1}}'])
def test_a_bad_batch_header_is_refused_by_name(line: bytes) -> None:
    with pytest.raises(ValidationError, match="batch"):
        batch_header(line)


def record(**extra: Any) -> TaskRecord:
    return TaskRecord.from_payload({"taskId": "t1", "state": "success", "resultJson": "", **extra})


def test_a_record_s_consumed_credits_are_read_when_present_and_sane() -> None:
    assert record().consumed_credits is None
    assert record(consumeCredits=14.4).consumed_credits == 14.4
    assert record(creditsConsumed="27").consumed_credits == 27.0
    assert record(costCredits=True).consumed_credits is None  # a bool is not a number
    assert record(consumeCredits=-3).consumed_credits is None
    assert record(consumeCredits=1e9).consumed_credits is None
    assert record(consumeCredits="NaN").consumed_credits is None
