"""Settings: typed, from IMAGINEQ_ variables, every bad field reported at once, secrets never printed."""

import json

import pytest

from config import ConfigError, load_settings
from config.celery import TIME_LIMITS, celery_config


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in list(__import__("os").environ):
        if name.startswith("IMAGINEQ_"):
            monkeypatch.delenv(name)


def test_api_key_shortcut_makes_a_default_account(monkeypatch):
    monkeypatch.setenv("IMAGINEQ_API_KEY", "sk-very-secret")
    monkeypatch.setenv("IMAGINEQ_UPSTREAM_BASE_URL", "http://127.0.0.1:9/")
    settings = load_settings()
    [account] = settings.accounts
    assert account.name == "default"
    assert account.base_url == "http://127.0.0.1:9"
    assert (account.max_in_progress, account.max_creations_per_window, account.record_info_per_s) == (
        30,
        300,
        10,
    )
    assert "sk-very-secret" not in repr(settings)
    assert "sk-very-secret" not in str(settings.model_dump())


def test_accounts_from_json_with_margins(monkeypatch):
    monkeypatch.setenv(
        "IMAGINEQ_ACCOUNTS",
        json.dumps(
            [
                {"name": "a", "api_key": "k1", "in_progress_margin": 1, "creations_margin": 5},
                {"name": "b", "api_key": "k2"},
            ]
        ),
    )
    settings = load_settings()
    assert [a.name for a in settings.accounts] == ["a", "b"]
    assert settings.account("a").in_progress_limit == 29
    assert settings.account("a").creations_limit == 295


def test_nested_settings_from_env(monkeypatch):
    monkeypatch.setenv("IMAGINEQ_S3__BUCKET", "videos-prod")
    monkeypatch.setenv("IMAGINEQ_POLL__DEADLINE_S", "600")
    settings = load_settings()
    assert settings.s3.bucket == "videos-prod"
    assert settings.poll.deadline_s == 600


def test_every_bad_field_is_listed_in_one_message(monkeypatch):
    monkeypatch.setenv(
        "IMAGINEQ_ACCOUNTS",
        json.dumps([{"name": "a", "api_key": "", "max_in_progress": -1}]),
    )
    monkeypatch.setenv("IMAGINEQ_S3__KEY_TEMPLATE", "videos/{nope}.mp4")
    monkeypatch.setenv("IMAGINEQ_JOB_TTL_S", "5")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("Invalid configuration:")
    assert "accounts.0.api_key [IMAGINEQ_ACCOUNTS]: Value error, must not be empty" in message
    assert (
        "accounts.0.max_in_progress [IMAGINEQ_ACCOUNTS]: Input should be greater than or equal to 1 (got -1)" in message
    )
    assert "s3.key_template" in message and "nope" in message
    assert "job_ttl_s [IMAGINEQ_JOB_TTL_S]: Input should be greater than or equal to 60 (got '5')" in message


def test_missing_api_key_is_a_clear_error_for_upstream_processes():
    settings = load_settings()
    with pytest.raises(ConfigError, match="no upstream account configured; set IMAGINEQ_API_KEY"):
        settings.require_accounts()


def test_duplicate_account_names_are_refused(monkeypatch):
    monkeypatch.setenv("IMAGINEQ_ACCOUNTS", json.dumps([{"name": "a", "api_key": "k"}] * 2))
    with pytest.raises(ConfigError, match="account names must be unique"):
        load_settings()


def test_visibility_timeout_must_outlast_every_task():
    with pytest.raises(ValueError, match="visibility_timeout_s"):
        celery_config(load_settings(visibility_timeout_s=600))
    # The store (3,000 s) fits under 3,100 s, but the nightly inbox (3,400 s) does not: every task counts.
    with pytest.raises(ValueError, match=r"imagineq\.batch_inbox: 3400 s"):
        celery_config(load_settings(visibility_timeout_s=3100))
    from workers.celery import app

    app.loader.import_default_modules()  # the task modules (app.conf.imports), as a worker loads them
    assert {name: (limit.soft_s, limit.hard_s) for name, limit in TIME_LIMITS.items()} == {
        name: (app.tasks[name].soft_time_limit, app.tasks[name].time_limit) for name in TIME_LIMITS
    }, "every task takes its limits from config.celery.TIME_LIMITS"
    config = celery_config(load_settings())
    assert config["broker_transport_options"]["visibility_timeout"] == 3600
    assert config["worker_prefetch_multiplier"] == 1
    assert config["accept_content"] == ["json"]


def test_derived_rate_limits_follow_the_pool_and_never_bind(monkeypatch):
    accounts = [{"name": "a", "api_key": "k1"}, {"name": "b", "api_key": "k2", "in_progress_margin": 2}]
    monkeypatch.setenv("IMAGINEQ_ACCOUNTS", json.dumps(accounts))
    config = celery_config(load_settings())
    annotations = config["task_annotations"]
    assert annotations["imagineq.submit"] == {"rate_limit": "58/s"}  # every slot of the pool per second
    assert annotations["imagineq.poll"] == {"rate_limit": "40/s"}  # twice the two keys' recordInfo budget
    from workers.celery import create_app

    # The workers' consumer delivers the rate it is set to (Celery's own does not: workers/consumer.py).
    assert create_app(load_settings()).conf.worker_consumer == "workers.consumer:Consumer"
    monkeypatch.setenv("IMAGINEQ_SUBMIT_RATE_LIMIT", "5/s")
    assert celery_config(load_settings())["task_annotations"]["imagineq.submit"] == {"rate_limit": "5/s"}


def test_the_record_info_window_is_whole_calls_over_the_guarded_second(monkeypatch):
    accounts = [
        {"name": "a", "api_key": "k1"},
        {"name": "b", "api_key": "k2", "record_info_per_s": 2.5, "record_info_guard_s": 0},
    ]
    monkeypatch.setenv("IMAGINEQ_ACCOUNTS", json.dumps(accounts))
    first, second = load_settings().accounts
    assert first.record_info_window[0] == 10
    assert first.record_info_window[1] == pytest.approx(1.2)
    assert second.record_info_window[0] == 2  # 2 whole calls per 0.8 s: 2.5 per second
    assert second.record_info_window[1] == pytest.approx(0.8)
