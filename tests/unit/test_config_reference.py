"""The configuration reference is written from the settings models: every setting described, the page current."""

from __future__ import annotations

from pathlib import Path

from devstack.reference import page, undescribed

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_has_a_description() -> None:
    assert undescribed() == [], "give these settings a docstring: it is their description in the reference"


def test_the_committed_reference_is_what_the_models_say() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == page(), "run `python -m devstack.reference docs/configuration.md` (make docs does)"


def test_a_setting_without_a_description_is_caught(monkeypatch) -> None:
    from config.settings import Settings

    field = Settings.model_fields["job_ttl_s"]
    monkeypatch.setattr(field, "description", None)
    assert "IMAGINEQ_JOB_TTL_S" in undescribed()
