"""Who may use the HTTP ingress (principals and their tokens), the dashboard, and outbound webhooks."""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from config.models import (
    FrozenSettingsModel,
    SettingsModel,
    check_host_patterns,
    check_networks,
    secret_not_blank,
)

#: A bearer token is the whole of a caller's identity: at least this long, and not a repeated few
#: characters (``secrets.token_urlsafe(24)`` gives 32 characters of 64 kinds).
TOKEN_MIN_CHARS = 24
TOKEN_MIN_DISTINCT = 10


def strong_token(value: SecretStr) -> SecretStr:
    """A token long and varied enough that guessing it is hopeless (the value is never shown)."""
    token = value.get_secret_value()
    if len(token) < TOKEN_MIN_CHARS or len(set(token)) < TOKEN_MIN_DISTINCT:
        raise ValueError(
            f"a token must be at least {TOKEN_MIN_CHARS} characters with at least {TOKEN_MIN_DISTINCT} different "
            "ones (e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    return value


def token_fingerprint(token: SecretStr) -> str:
    """The sha256 of a token: what a dashboard session remembers of the token it was opened with."""
    return hashlib.sha256(token.get_secret_value().encode()).hexdigest()


#: The admin principal every plain ``ingress_tokens`` entry stands for.
LEGACY_PRINCIPAL = "default"

#: What an endpoint may subscribe to (the events stream's types, ``core.events``).
EVENT_TYPES = (
    "job.stored",
    "job.failed",
    "job.expired",
    "job.canceled",
    "batch.completed",
    "workflow.completed",
    "budget.warning",
    "account.low_balance",
)


class WebhookEndpoint(FrozenSettingsModel):
    """Where a principal's events are POSTed, signed with this endpoint's own secret (Standard Webhooks)."""

    url: str = Field(min_length=8, max_length=2048)
    """Where the events are POSTed (http or https, no user info)."""
    secret: SecretStr
    """``whsec_`` + base64, as Standard Webhooks libraries make and read it."""
    events: list[str] = Field(default_factory=lambda: list(EVENT_TYPES))
    """The event types it gets (default: all)."""

    secret_not_blank = field_validator("secret")(secret_not_blank)

    @field_validator("events")
    @classmethod
    def _known_events(cls, events: list[str]) -> list[str]:
        unknown = sorted(set(events) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}")
        return events

    @field_validator("url")
    @classmethod
    def _web_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            raise ValueError("must be an http:// or https:// URL with a host and no user info")
        return url


class NotifySettings(SettingsModel):
    """Outbound webhooks (``workers.notify``): how deliveries are signed, sent and retried."""

    signing_secret: SecretStr | None = None
    """The secret a job's own ``notify_url`` is signed with (``whsec_…``); without it no job may set one."""
    retry_for_s: float = Field(default=86400.0, gt=0)
    """A delivery is retried (exponential backoff with jitter) for this long after its first attempt."""
    backoff_base_s: float = Field(default=1.0, gt=0)
    """First retry delay of a failed delivery, doubled each attempt (with jitter)."""
    backoff_max_s: float = Field(default=600.0, gt=0)
    """Longest delay between two attempts, and longest time a breaker stays open."""
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    """Connect and read timeout of one attempt; the answer's body is read up to ``max_response_bytes``."""
    attempt_deadline_s: float = Field(default=15.0, gt=0, le=60)
    """The whole of one attempt (connect, request, the answer's headers and body) ends after this long, however the
    receiver drips its bytes: it counts as a failed attempt.
    """
    max_response_bytes: int = Field(default=64 * 1024, ge=0)
    """A receiver's answer is read up to this many bytes."""
    breaker_failures: int = Field(default=5, ge=1)
    """After this many failures in a row an endpoint is left alone (its deliveries wait) for ``breaker_open_s``,
    doubling each time it fails again, up to ``backoff_max_s``.
    """
    breaker_open_s: float = Field(default=30.0, gt=0)
    """How long an endpoint's breaker stays open the first time (doubling each time it fails again)."""
    include_video_url: bool = False
    """Put a presigned URL of the stored video in ``job.stored`` payloads, valid this long."""
    video_url_ttl_s: int = Field(default=3600, ge=60, le=7 * 86400)
    """How long that presigned URL is valid."""
    allow_networks: list[str] = Field(default_factory=list)
    """Networks a receiver may be in although they are not public (e.g. ``["127.0.0.0/8"]`` for a local receiver);
    every other loopback, private, link-local or reserved address is refused. These hold for the operator's
    receivers only: the principals' webhook endpoints and the ``notify_url`` of jobs enqueued without a principal
    (Python API, CLI, batches). A principal's own ``notify_url`` follows that principal's ``notify_hosts`` and
    ``notify_networks``.
    """

    @field_validator("signing_secret")
    @classmethod
    def _signingsecret_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else secret_not_blank(value)


class PrincipalSettings(FrozenSettingsModel):
    """Who may use the HTTP ingress: a named principal, its bearer token, what it may see and send."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    """The principal's name, unique (the owner of its jobs)."""
    token: SecretStr | None = None
    """The principal's bearer token; or, instead, ``token_sha256``: its sha256 (hex), so a process that needs the
    principals (the notify workers: their webhooks) never holds the token itself.
    """
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    """The sha256 (hex) of the principal's token, instead of ``token``."""
    admin: bool = False
    """An admin sees and acts on every job; everyone else only on the jobs they enqueued."""
    enqueue_per_s: float = Field(default=100.0, gt=0)
    """Jobs enqueued per second (a token bucket)."""
    enqueue_burst: int = Field(default=1000, ge=1)
    """The most jobs enqueued at once (the bucket's size)."""
    budget_day: float | None = Field(default=None, gt=0)
    """Credits this principal may spend per UTC day, charged and reserved together (unset:
    ``credits.principal_day``); a request past it is refused (402, nothing written)."""
    budget_month: float | None = Field(default=None, gt=0)
    """...and per UTC month (unset: ``credits.principal_month``)."""
    max_live_jobs: int = Field(default=10_000, ge=1)
    """Jobs of this principal not yet finished (queued or on their way) at any time."""
    max_metadata_bytes: int = Field(default=1024 * 1024, ge=0)
    """Metadata bytes (as JSON) in one request, all its jobs together."""
    webhooks: list[WebhookEndpoint] = Field(default_factory=list)
    """Where this principal's events are POSTed (its jobs'; ``batch.completed`` for an admin)."""
    weight: float = Field(default=1.0, gt=0, le=1000)
    """This principal's share of the creations when slots are scarce, against the others' (fair share: 3 takes
    three times what 1 takes, within each priority class)."""
    max_slot_share: float | None = Field(default=None, gt=0, le=1)
    """At most this fraction of each account pool's in-progress slots for this principal's jobs (unset: no cap)."""
    max_event_streams: int = Field(default=5, ge=1, le=1000)
    """Event streams (``GET /v1/events``) this principal may hold open at once, across every web replica."""
    max_kept_jobs: int = Field(default=100_000, ge=1)
    """Job records this principal may have in Redis at once, finished ones included (a finished record is kept
    ``job_ttl_s``): with the prompt and metadata caps, a bound on its share of Redis's memory.
    """
    notify_secret: SecretStr | None = None
    """The secret the ``notify_url`` deliveries of this principal's jobs are signed with (``whsec_…``). Unset:
    derived from ``notify.signing_secret`` and the principal's name (``imagineq notify-secret`` prints it), so no
    two principals share one and none can sign for another.
    """
    notify_hosts: list[str] = Field(default_factory=list)
    """Hosts this principal's ``notify_url`` may name: ``name``, ``*.domain`` or ``name:port``; a name without a port
    allows 80 and 443 only. Empty: any host, on ports 80 and 443. (Not for an admin: its ``notify_url`` is the
    operator's, under ``notify.allow_networks``.)
    """
    notify_networks: list[str] = Field(default_factory=list)
    """Networks (CIDR) this principal's ``notify_url`` may reach although they are not public; none by default (every
    loopback, private, link-local or reserved address is refused).
    """

    @field_validator("token")
    @classmethod
    def _token_strong(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else strong_token(value)

    @model_validator(mode="after")
    def _one_token(self) -> PrincipalSettings:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of token and token_sha256")
        return self

    @field_validator("notify_secret")
    @classmethod
    def _notifysecret_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else secret_not_blank(value)

    @field_validator("notify_networks")
    @classmethod
    def _notify_networks(cls, value: list[str]) -> list[str]:
        return check_networks(value)

    @field_validator("notify_hosts")
    @classmethod
    def _notify_hosts(cls, value: list[str]) -> list[str]:
        return check_host_patterns(value)

    @property
    def fingerprint(self) -> str:
        """The sha256 (hex) of the principal's token, however it was given."""
        if self.token is not None:
            return token_fingerprint(self.token)
        assert self.token_sha256 is not None
        return self.token_sha256


class DashboardSettings(SettingsModel):
    """The jobs dashboard the ``web`` process serves at ``/`` (sign-in with an ingress token)."""

    enabled: bool = True
    """Serve the dashboard at ``/``."""
    session_ttl_s: int = Field(default=8 * 3600, ge=60, le=30 * 86400)
    """A sign-in lasts this long (the session lives in Redis, so every web replica knows it)."""
    video_url_ttl_s: int = Field(default=300, ge=30, le=86400)
    """Lifetime of the presigned S3 URL a job page plays its video from."""
    video_endpoint_url: str | None = None
    """The S3 endpoint as the users' browsers reach it, for those URLs (default: ``s3.endpoint_url``; in docker
    compose the app's ``http://s3:8333`` is no name a browser knows).
    """
    secure_cookies: bool = False
    """Mark the session cookie ``Secure`` always (it is anyway when the request came over HTTPS, as seen by the web:
    behind a TLS proxy run uvicorn with ``--proxy-headers``, or set this).
    """
