"""Configuration: the one typed settings object and the Celery configuration built from it."""

from config.settings import (
    AccountSettings,
    CallbackSettings,
    ConfigError,
    HttpSettings,
    PollSettings,
    S3Settings,
    Settings,
    load_settings,
)

__all__ = [
    "AccountSettings",
    "CallbackSettings",
    "ConfigError",
    "HttpSettings",
    "PollSettings",
    "S3Settings",
    "Settings",
    "load_settings",
]
