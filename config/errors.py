"""The root of every error ImagineQ raises on purpose, here at the bottom of the layers so that the
settings' own error is part of the one tree too (drawn whole in :mod:`core.errors`)."""

from __future__ import annotations

from typing import ClassVar


class ImagineQError(Exception):
    """Root of every error ImagineQ raises on purpose."""

    _reason: ClassVar[str] = "error"
    _retryable: ClassVar[bool] = False
    _cools_down_account: ClassVar[bool] = False

    @property
    def reason(self) -> str:
        """Stable snake_case code, usable as a job failure reason."""
        return self._reason

    @property
    def retryable(self) -> bool:
        """True when the same call, unchanged, may succeed later."""
        return self._retryable

    @property
    def cools_down_account(self) -> bool:
        """True when every submitter of the account must hold back for a while (429, 455)."""
        return self._cools_down_account


class ConfigError(ImagineQError):
    """Configuration is invalid; the message lists every bad field and why."""

    _reason = "config"
