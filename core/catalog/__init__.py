"""The model catalog: every model of the upstream's Grok Imagine family, declared once
(:mod:`core.catalog.models`), and the deployment's view of it (:class:`Catalog`: which models are on, each
pool's caps per account, the poll planner's first check).

A model is named by its short name (``text-to-video``) or the upstream's string
(``grok-imagine/text-to-video``); jobs record the short name, which is also the model's quota pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from config.errors import ConfigError
from config.settings import AccountSettings, ModelSettings, Settings
from core.catalog.fields import Field
from core.catalog.models import FAMILY, TEXT_TO_VIDEO
from core.catalog.spec import ModelSpec, Output, Resolved
from core.errors import ValidationError

__all__ = [
    "DEFAULT_MODEL",
    "FAMILY",
    "MODELS",
    "Catalog",
    "Field",
    "ModelSpec",
    "Output",
    "PoolCaps",
    "Resolved",
    "model_named",
    "pool_caps",
]

#: Every model by short name, in the order they are shown.
MODELS: Final[Mapping[str, ModelSpec]] = {spec.short: spec for spec in FAMILY}
_BY_UPSTREAM_NAME: Final = {spec.name: spec for spec in FAMILY}
#: The model of a job that names none (and of every job stored before the catalog).
DEFAULT_MODEL: Final = TEXT_TO_VIDEO.short


def model_named(name: object, *, field: str = "model") -> ModelSpec:
    """The model called ``name`` (short or upstream name); ValidationError naming ``field`` otherwise."""
    if not isinstance(name, str):
        raise ValidationError(field, f"must be a string, one of {', '.join(MODELS)}")
    spec = MODELS.get(name) or _BY_UPSTREAM_NAME.get(name)
    if spec is None:
        raise ValidationError(field, f"must be one of {', '.join(MODELS)} (got {name[:80]!r})")
    return spec


@dataclass(frozen=True)
class PoolCaps:
    """What ImagineQ lets one account hold in one model's pool (the upstream's caps less the margins)."""

    in_progress: int
    creations: int


def pool_caps(account: AccountSettings, spec: ModelSpec, chosen: ModelSettings | None = None) -> PoolCaps:
    """A pool's caps on ``account``: the account's ``pools`` entry, else (text-to-video) the account's own
    caps, else the deployment's ``models`` entry (``chosen``), else the catalog's default; less the
    account's margins."""
    override = account.pools.get(spec.short)
    if spec is TEXT_TO_VIDEO:
        in_progress, creations = account.max_in_progress, account.max_creations_per_window
    else:
        in_progress = (chosen and chosen.max_in_progress) or spec.default_in_progress
        creations = (chosen and chosen.max_creations_per_window) or spec.default_per_hour
    if override is not None:
        in_progress = override.max_in_progress or in_progress
        creations = override.max_creations_per_window or creations
    return PoolCaps(
        in_progress=max(1, in_progress - account.in_progress_margin),
        creations=max(1, creations - account.creations_margin),
    )


class Catalog:
    """The family as this deployment runs it: the models switched on and each (account, pool)'s caps."""

    def __init__(self, settings: Settings) -> None:
        for name in settings.models:
            if name not in MODELS:
                raise ConfigError(f"models: unknown model {name!r}; the family is {', '.join(MODELS)}")
        for account in settings.accounts:
            for name in account.pools:
                if name not in MODELS:
                    raise ConfigError(
                        f"accounts[{account.name}].pools: unknown model {name!r}; the family is {', '.join(MODELS)}"
                    )
        video = settings.models.get(TEXT_TO_VIDEO.short)
        if video is not None and (video.max_in_progress or video.max_creations_per_window):
            raise ConfigError(
                "models.text-to-video: its caps are each account's max_in_progress and max_creations_per_window"
            )
        self._settings = settings

    @property
    def enabled(self) -> list[ModelSpec]:
        return [spec for spec in FAMILY if self.is_enabled(spec)]

    def is_enabled(self, spec: ModelSpec) -> bool:
        chosen = self._settings.models.get(spec.short)
        return chosen is None or chosen.enabled

    def spec(self, name: str, *, field: str = "model") -> ModelSpec:
        """The model called ``name``, refused (naming ``field`` and the setting) when switched off."""
        spec = model_named(name, field=field)
        if not self.is_enabled(spec):
            raise ValidationError(
                field, f"{spec.short} is switched off on this deployment (setting models.{spec.short}.enabled)"
            )
        return spec

    def caps(self, account: AccountSettings, pool: str) -> PoolCaps:
        """The caps of ``pool`` on ``account`` (see :func:`pool_caps`)."""
        return pool_caps(account, MODELS[pool], self._settings.models.get(pool))

    def first_check_s(self, spec: ModelSpec) -> float:
        """No task of ``spec`` is asked about before it is this old (``poll.first_check_s``, else the
        model's shortest typical generation time)."""
        configured = self._settings.poll.first_check_s
        return spec.generation_s[0] if configured is None else configured

    def pools(self) -> Iterable[ModelSpec]:
        """Every model's pool (a pool switched off may still hold leases of jobs accepted before)."""
        return FAMILY
