"""The one typed settings object.

Every value comes from environment variables prefixed ``IMAGINEQ_`` (nested fields use ``__``, e.g.
``IMAGINEQ_S3__BUCKET``) or from an optional ``.env`` file. This is the only module that reads the
environment; everything else receives a ``Settings`` (or a part of it) explicitly.

Accounts are given either as a JSON list in ``IMAGINEQ_ACCOUNTS`` or, for the common single-account case,
with ``IMAGINEQ_API_KEY`` (+ ``IMAGINEQ_UPSTREAM_BASE_URL``), which becomes an account named ``default``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.errors import ConfigError as ConfigError  # raised here; defined with the root of the errors

DEFAULT_BASE_URL = "https://api.apikley.ru"
DEFAULT_KEY_TEMPLATE = "videos/{yyyy}/{mm}/{dd}/{job_id}.mp4"
KEY_TEMPLATE_FIELDS = {"yyyy", "mm", "dd", "job_id", "task_id", "account"}


def _secret_not_blank(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    return value


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
    import hashlib

    return hashlib.sha256(token.get_secret_value().encode()).hexdigest()


class AccountSettings(BaseModel):
    """One upstream account (API key) and its quotas."""

    model_config = {"frozen": True}

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    api_key: SecretStr
    base_url: str = DEFAULT_BASE_URL
    #: Upstream cap on tasks not yet terminal.
    max_in_progress: int = Field(default=30, ge=1)
    #: Upstream cap on creations per rolling window.
    max_creations_per_window: int = Field(default=300, ge=1)
    #: Length of the rolling creation window (the upstream's is an hour).
    creation_window_s: float = Field(default=3600.0, gt=0)
    #: Added to the window on our side: our log records a creation just *before* createTask is sent,
    #: the upstream just after it arrives, so without a guard a slot reopens a few ms early.
    window_guard_s: float = Field(default=2.0, ge=0)
    #: recordInfo calls per second allowed for this key, in every rolling second.
    record_info_per_s: float = Field(default=10.0, gt=0)
    #: Added to each rolling second on our side: a call is logged just before it is sent, the upstream
    #: counts it when it arrives, and two calls' trips differ by a few ms (more on a busy machine).
    record_info_guard_s: float = Field(default=0.2, ge=0)
    #: Slots left free for other clients sharing the account.
    in_progress_margin: int = Field(default=0, ge=0)
    creations_margin: int = Field(default=0, ge=0)

    _key_not_blank = field_validator("api_key")(_secret_not_blank)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _margins_below_limits(self) -> AccountSettings:
        if self.in_progress_margin >= self.max_in_progress:
            raise ValueError(
                f"in_progress_margin ({self.in_progress_margin}) must be below max_in_progress ({self.max_in_progress})"
            )
        if self.creations_margin >= self.max_creations_per_window:
            raise ValueError(
                f"creations_margin ({self.creations_margin}) must be below max_creations_per_window "
                f"({self.max_creations_per_window})"
            )
        return self

    @property
    def in_progress_limit(self) -> int:
        """The cap ImagineQ enforces: the upstream cap less the safety margin."""
        return self.max_in_progress - self.in_progress_margin

    @property
    def enforced_window_s(self) -> float:
        """The creation window ImagineQ enforces: the upstream's plus the guard."""
        return self.creation_window_s + self.window_guard_s

    @property
    def creations_limit(self) -> int:
        return self.max_creations_per_window - self.creations_margin

    @property
    def record_info_window(self) -> tuple[int, float]:
        """The recordInfo limit ImagineQ enforces: (calls, window s), at most ``calls`` in any rolling
        window — the upstream's rate over whole calls, the window widened by the guard."""
        calls = max(1, int(self.record_info_per_s))
        return calls, calls / self.record_info_per_s + self.record_info_guard_s


class S3Settings(BaseModel):
    bucket: str = Field(default="imagineq", min_length=3, max_length=63)
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    key_template: str = DEFAULT_KEY_TEMPLATE
    #: Multipart part size; also the upper bound of the store worker's buffer per transfer.
    part_size_mb: int = Field(default=8, ge=5, le=512)
    #: Downloads larger than this are refused (bytes).
    max_download_bytes: int = Field(default=2 * 1024**3, ge=1)
    #: Create the bucket if it does not exist (local S3 servers).
    create_bucket: bool = False

    @field_validator("key_template")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        import string

        names = {name for _, name, _, _ in string.Formatter().parse(value) if name}
        unknown = names - KEY_TEMPLATE_FIELDS
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}; allowed: {sorted(KEY_TEMPLATE_FIELDS)}")
        if "job_id" not in names:
            raise ValueError("must contain {job_id} so every job has its own object")
        return value


class CallbackSettings(BaseModel):
    #: Public base URL of the ``web`` process; callbacks are off when unset.
    public_base_url: str | None = None
    hmac_key: SecretStr | None = None
    #: Reject signed callbacks whose timestamp is older than this.
    max_age_s: int = Field(default=300, ge=1)

    @property
    def enabled(self) -> bool:
        return self.public_base_url is not None


class PollSettings(BaseModel):
    """When to ask recordInfo (ARCHITECTURE.md, "Polls"): the poll planner spends each account's budget
    on the tasks that may have finished, within these bounds."""

    #: No task is asked about before it is this old: the upstream's shortest generation time.
    first_check_s: float = Field(default=10.0, ge=0)
    #: ``(until_s, interval_s)`` steps: a task younger than ``until_s`` is asked about at most every
    #: ``interval_s`` (the budget decides how often within that). Past the first steps this is the
    #: upstream's suggested back-off for long tasks (5–10 s until 2 min, 15–30 s after).
    schedule: list[tuple[float, float]] = [(30.0, 1.0), (120.0, 5.0), (float("inf"), 15.0)]
    #: Give up (``failed(timed_out)``) when the task is older than this.
    deadline_s: float = Field(default=900.0, gt=0)
    #: With callbacks on, polling is a safety net: first check this late, then at ``safety_interval_s``.
    safety_first_s: float = Field(default=45.0, gt=0)
    safety_interval_s: float = Field(default=30.0, gt=0)

    @field_validator("schedule")
    @classmethod
    def _sane_schedule(cls, value: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if not value:
            raise ValueError("must have at least one step")
        if any(interval <= 0 or interval > 30 for _, interval in value):
            raise ValueError("every interval must be in (0, 30] seconds")
        if [until for until, _ in value] != sorted(until for until, _ in value):
            raise ValueError("steps must be in increasing until_s order")
        return value


class HttpSettings(BaseModel):
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    #: Read timeout between chunks of a result download.
    download_read_timeout_s: float = Field(default=60.0, gt=0)
    user_agent: str = "Mozilla/5.0 (compatible; ImagineQ/0.1; +https://github.com/imagineq)"


#: The admin principal every plain ``ingress_tokens`` entry stands for.
LEGACY_PRINCIPAL = "default"

#: What an endpoint may subscribe to (the events stream's types, ``core.events``).
EVENT_TYPES = ("job.stored", "job.failed", "job.expired", "job.canceled", "batch.completed")


class WebhookEndpoint(BaseModel):
    """Where a principal's events are POSTed, signed with this endpoint's own secret (Standard Webhooks)."""

    model_config = {"frozen": True}

    url: str = Field(min_length=8, max_length=2048)
    #: ``whsec_`` + base64, as Standard Webhooks libraries make and read it.
    secret: SecretStr
    events: list[str] = Field(default_factory=lambda: list(EVENT_TYPES))

    _secret_not_blank = field_validator("secret")(_secret_not_blank)

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


class NotifySettings(BaseModel):
    """Outbound webhooks (``workers.notify``): how deliveries are signed, sent and retried."""

    #: The secret a job's own ``notify_url`` is signed with (``whsec_…``); without it no job may set one.
    signing_secret: SecretStr | None = None
    #: A delivery is retried (exponential backoff with jitter) for this long after its first attempt.
    retry_for_s: float = Field(default=86400.0, gt=0)
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=600.0, gt=0)
    #: Connect and read timeout of one attempt; the answer's body is read up to ``max_response_bytes``.
    timeout_s: float = Field(default=5.0, gt=0, le=60)
    #: The whole of one attempt (connect, request, the answer's headers and body) ends after this long,
    #: however the receiver drips its bytes: it counts as a failed attempt.
    attempt_deadline_s: float = Field(default=15.0, gt=0, le=60)
    max_response_bytes: int = Field(default=64 * 1024, ge=0)
    #: After this many failures in a row an endpoint is left alone (its deliveries wait) for
    #: ``breaker_open_s``, doubling each time it fails again, up to ``backoff_max_s``.
    breaker_failures: int = Field(default=5, ge=1)
    breaker_open_s: float = Field(default=30.0, gt=0)
    #: Put a presigned URL of the stored video in ``job.stored`` payloads, valid this long.
    include_video_url: bool = False
    video_url_ttl_s: int = Field(default=3600, ge=60, le=7 * 86400)
    #: Networks a receiver may be in although they are not public (e.g. ``["127.0.0.0/8"]`` for a local
    #: receiver); every other loopback, private, link-local or reserved address is refused. These hold
    #: for the operator's receivers only: the principals' webhook endpoints and the ``notify_url`` of jobs
    #: enqueued without a principal (Python API, CLI, batches). A principal's own ``notify_url`` follows
    #: that principal's ``notify_hosts`` and ``notify_networks``.
    allow_networks: list[str] = []

    @field_validator("signing_secret")
    @classmethod
    def _signing_secret_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _secret_not_blank(value)


class PrincipalSettings(BaseModel):
    """Who may use the HTTP ingress: a named principal, its bearer token, what it may see and send."""

    model_config = {"frozen": True}

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    #: The principal's bearer token; or, instead, ``token_sha256``: its sha256 (hex), so a process that
    #: needs the principals (the notify workers: their webhooks) never holds the token itself.
    token: SecretStr | None = None
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    #: An admin sees and acts on every job; everyone else only on the jobs they enqueued.
    admin: bool = False
    #: Jobs enqueued per second (a token bucket), and the most at once.
    enqueue_per_s: float = Field(default=100.0, gt=0)
    enqueue_burst: int = Field(default=1000, ge=1)
    #: Jobs of this principal not yet finished (queued or on their way) at any time.
    max_live_jobs: int = Field(default=10_000, ge=1)
    #: Metadata bytes (as JSON) in one request, all its jobs together.
    max_metadata_bytes: int = Field(default=1024 * 1024, ge=0)
    #: Where this principal's events are POSTed (its jobs'; ``batch.completed`` for an admin).
    webhooks: list[WebhookEndpoint] = []
    #: Event streams (``GET /v1/events``) this principal may hold open at once, across every web replica.
    max_event_streams: int = Field(default=5, ge=1, le=1000)
    #: Job records this principal may have in Redis at once, finished ones included (a finished record is
    #: kept ``job_ttl_s``): with the prompt and metadata caps, a bound on its share of Redis's memory.
    max_kept_jobs: int = Field(default=100_000, ge=1)
    #: The secret the ``notify_url`` deliveries of this principal's jobs are signed with (``whsec_…``).
    #: Unset: derived from ``notify.signing_secret`` and the principal's name (``imagineq notify-secret``
    #: prints it), so no two principals share one and none can sign for another.
    notify_secret: SecretStr | None = None
    #: Hosts this principal's ``notify_url`` may name: ``name``, ``*.domain`` or ``name:port``; a name
    #: without a port allows 80 and 443 only. Empty: any host, on ports 80 and 443. (Not for an admin: its
    #: ``notify_url`` is the operator's, under ``notify.allow_networks``.)
    notify_hosts: list[str] = []
    #: Networks (CIDR) this principal's ``notify_url`` may reach although they are not public; none by
    #: default (every loopback, private, link-local or reserved address is refused).
    notify_networks: list[str] = []

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
    def _notify_secret_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _secret_not_blank(value)

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


def check_networks(value: list[str]) -> list[str]:
    """Every entry a network in CIDR form (a bare address is its own /32 or /128)."""
    import ipaddress

    for network in value:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ValueError(f"{network!r} is not a network (CIDR, e.g. 127.0.0.0/8)") from None
    return value


def check_host_patterns(value: list[str]) -> list[str]:
    """Every entry a host name, ``*.domain`` pattern or ``name:port``."""
    for host in value:
        name = host.removeprefix("*.")
        name, colon, port = name.rpartition(":") if not name.endswith("]") else (name, "", "")
        name = name if colon else port
        if colon and not port.isdigit():
            raise ValueError(f"{host!r}: the port must be a number")
        if not name or "*" in name or "/" in name or "@" in name:
            raise ValueError(f"{host!r} is not a host name, *.domain pattern or name:port")
    return value


#: Where the upstream's result files live (its own domain and kie.ai's file hosts), besides the hosts of
#: the configured accounts' base URLs, which are always allowed.
DEFAULT_RESULT_HOSTS = ("*.apikley.ru", "*.kie.ai", "*.aiquickdraw.com", "*.redpandaai.co")


class DashboardSettings(BaseModel):
    """The jobs dashboard the ``web`` process serves at ``/`` (sign-in with an ingress token)."""

    enabled: bool = True
    #: A sign-in lasts this long (the session lives in Redis, so every web replica knows it).
    session_ttl_s: int = Field(default=8 * 3600, ge=60, le=30 * 86400)
    #: Lifetime of the presigned S3 URL a job page plays its video from.
    video_url_ttl_s: int = Field(default=300, ge=30, le=86400)
    #: The S3 endpoint as the users' browsers reach it, for those URLs (default: ``s3.endpoint_url``;
    #: in docker compose the app's ``http://minio:9000`` is no name a browser knows).
    video_endpoint_url: str | None = None
    #: Mark the session cookie ``Secure`` always (it is anyway when the request came over HTTPS, as seen
    #: by the web: behind a TLS proxy run uvicorn with ``--proxy-headers``, or set this).
    secure_cookies: bool = False


class DownloadSettings(BaseModel):
    """Which result URLs a store may fetch, and how slow a transfer may be."""

    #: Hosts results may come from, for the URL and every redirect hop: exact names or ``*.domain`` (any
    #: name under it), on ports 80 and 443, or ``name:port``. The accounts' base URL hosts are added.
    result_hosts: list[str] = Field(default_factory=lambda: list(DEFAULT_RESULT_HOSTS))
    #: Networks (CIDR) allowed although not public, e.g. ``["127.0.0.0/8"]`` for a local simulator.
    #: Loopback, private, link-local (cloud metadata), multicast and reserved addresses are refused else.
    allow_networks: list[str] = []
    #: Media types a result must be sent with (``type/*`` for any subtype).
    content_types: list[str] = ["video/*"]
    #: A transfer slower than this over ``throughput_window_s`` is abandoned (and retried later).
    min_bytes_per_s: int = Field(default=32 * 1024, ge=0)
    throughput_window_s: float = Field(default=30.0, gt=0)
    #: No transfer of one result may take longer than this.
    deadline_s: float = Field(default=900.0, gt=0)
    #: A result host must have answered with its status and headers this long after the request began
    #: (a host that drips its headers would otherwise hold a store worker until the whole deadline).
    headers_deadline_s: float = Field(default=60.0, gt=0)

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return check_networks(value)

    @field_validator("result_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        return check_host_patterns(value)

    @field_validator("content_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        for media_type in value:
            main, _, sub = media_type.partition("/")
            if not main or not sub or main == "*":
                raise ValueError(f"{media_type!r} is not a media type (type/subtype or type/*)")
        return [media_type.lower() for media_type in value]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IMAGINEQ_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        # An empty variable is an unset one (docker compose passes ${OPTIONAL:-} through as "").
        env_ignore_empty=True,
    )

    #: ``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS) or ``unix:///path/to/socket``; or
    #: Sentinel: ``sentinel://[:password@]host:26379[/db];sentinel://host2:26379;...`` (kombu's form: the
    #: password is the data nodes'), with ``redis_sentinel_master`` naming the primary to follow.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: The master name the Sentinels know the primary by (``sentinel monitor <name> ...``).
    redis_sentinel_master: str = Field(default="mymaster", min_length=1, max_length=128)
    #: The Sentinels' own password (``requirepass`` of the sentinel processes), when they have one.
    redis_sentinel_password: SecretStr | None = None
    #: Key prefix for every Redis key ImagineQ owns (several deployments can share a Redis).
    redis_prefix: str = Field(default="iq", pattern=r"^[A-Za-z0-9_.-]+$")

    accounts: list[AccountSettings] = []
    #: Shortcut for one account named ``default``.
    api_key: SecretStr | None = None
    upstream_base_url: str = DEFAULT_BASE_URL

    s3: S3Settings = S3Settings()
    callbacks: CallbackSettings = CallbackSettings()
    poll: PollSettings = PollSettings()
    http: HttpSettings = HttpSettings()
    downloads: DownloadSettings = DownloadSettings()

    #: How long terminal job records are kept.
    job_ttl_s: int = Field(default=30 * 86400, ge=60)
    #: Longest a submit task waits in-process for quota before re-publishing the job.
    quota_wait_max_s: float = Field(default=20.0, gt=0)
    #: Celery ``rate_limit`` of the submit task per worker (e.g. "3/s"; "0/s": none, as when benchmarking
    #: with the quotas lifted); default derived from the accounts.
    submit_rate_limit: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?/[smh]$")
    #: Celery ``rate_limit`` of the poll task per worker; default: the accounts' recordInfo rate.
    poll_rate_limit: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?/[smh]$")
    #: How often one submitter re-checks a paused account's credits (it resumes when they return).
    pause_check_interval_s: float = Field(default=30.0, gt=0)
    #: Broker visibility timeout; must exceed every task time limit and countdown.
    visibility_timeout_s: int = Field(default=3600, ge=60)
    #: An in-progress lease lasts this long unless a poll renews it (a dead worker frees its slot then).
    quota_lease_ttl_s: float = Field(default=120.0, ge=1)
    #: After an unknown createTask outcome the job's slot stays taken this long (the task may run).
    unknown_outcome_grace_s: float = Field(default=900.0, ge=0)
    #: A worker pool process is replaced after its current task once its RSS passes this (MiB): a bound
    #: on slow growth in long-lived processes (see the README's operations notes).
    worker_max_memory_per_child_mb: int = Field(default=512, ge=64)
    #: ...and after this many tasks, whatever its size.
    worker_max_tasks_per_child: int = Field(default=10_000, ge=1)
    #: Enforce the global Redis quotas. Off only for the benchmark's naive baseline (rate_limit alone).
    quota_enforce: bool = True
    #: Replicas that must hold a write before it is relied on (Redis ``WAIT``), so a failover cannot
    #: forget it: a new quota slot (its creation-log entry and lease) before createTask is sent, and new
    #: jobs before the producer is told they are accepted. -1 (default) one when the primary has a
    #: replica connected, else none; 0 never waits; N that many.
    replica_acks: int = Field(default=-1, ge=-1, le=10)
    #: How long an acquire waits for them; without them in time the slot goes back and the job waits.
    quota_replica_ack_timeout_ms: int = Field(default=200, ge=1, le=10_000)
    #: How long an enqueue waits for them (0: it does not wait). Without them in time the jobs are still
    #: accepted (they are on the primary) and a warning is logged. A submit's createTask marker waits as
    #: long; unacknowledged, createTask is not sent and the job goes back to the queue.
    enqueue_replica_ack_timeout_ms: int = Field(default=1000, ge=0, le=60_000)

    # -- HTTP ingress: the ``web`` process (producers/web/) ------------------------------------------
    #: Named principals of the ingress (JSON list of {name, token, admin, limits...}): each sees only its
    #: own jobs unless ``admin``. With none (and no ``ingress_tokens``) every ``/v1/jobs`` request is
    #: refused (401): the ingress is never open by accident.
    ingress_principals: list[PrincipalSettings] = []
    #: Bearer tokens of a single-tenant deployment: each is the admin principal ``default``, which sees
    #: every job (JSON list in ``IMAGINEQ_INGRESS_TOKENS``). Use ``ingress_principals`` for tenants.
    ingress_tokens: list[SecretStr] = []
    #: Largest request body the web process reads (413 beyond); fits 1,000 jobs with long prompts.
    ingress_max_body_bytes: int = Field(default=16 * 1024**2, ge=1024)
    #: Bearer tokens for the operational endpoints: ``/metrics`` needs one; ``/healthz`` answers its status
    #: to anyone (for probes) and its details (Redis, worker names) only with one.
    ops_tokens: list[SecretStr] = []
    #: Serve the interactive API docs (``/docs``, from local files) and ``/openapi.json``.
    docs_enabled: bool = False
    dashboard: DashboardSettings = DashboardSettings()
    notify: NotifySettings = NotifySettings()
    #: New jobs are refused (503, nothing written) while Redis uses more than this share of its
    #: ``maxmemory`` (read from the server; no check when it has none): room is kept for the work in
    #: flight, the broker and the quotas, which must never meet a full Redis.
    redis_memory_budget_pct: float = Field(default=90.0, gt=0, le=100)
    #: Entries the events stream keeps (``GET /v1/events``, ``imagineq watch``), about: a client away for
    #: longer than that many job endings is told it missed some (an ``events-lost`` event).
    events_max_len: int = Field(default=100_000, ge=1000)
    #: A request's headers must be complete this long after its connection opened (or the last response).
    web_header_timeout_s: float = Field(default=10.0, gt=0)
    #: ...and its body this long after its headers: a client that announces a body and never sends it
    #: holds a connection no longer than this.
    web_body_timeout_s: float = Field(default=30.0, gt=0)
    #: Connections one client address may hold open to one web process at once (beyond: closed at once),
    #: so no single client can take the process's ``--limit-concurrency``. Trusted proxies are exempt.
    web_max_connections_per_client: int = Field(default=32, ge=1)
    #: Proxies (addresses or CIDR) in front of the web whose ``X-Forwarded-For`` and ``X-Forwarded-Proto``
    #: are believed: the client's address and scheme (for limits, the Secure cookie and the dashboard's
    #: origin check) are then the ones they forward. Nobody's by default.
    web_trusted_proxies: list[str] = []
    #: Failed sign-ins and unknown bearer tokens one client address may send per minute (and at once);
    #: past that every request of that address with a token answers 429 until the minute has refilled.
    web_auth_failures_per_min: int = Field(default=10, ge=1)
    #: How long ``/healthz`` reuses its last worker ping (a ping waits up to 0.5 s for replies).
    health_workers_cache_s: float = Field(default=10.0, ge=0)
    #: How long the web keeps a callback that arrived before submit recorded the taskId.
    early_callback_ttl_s: int = Field(default=3600, ge=60)
    # -- end of HTTP ingress settings -------------------------------------------------------------------

    # -- Batches, the nightly schedule and the reconciler ------------------------------------
    #: When beat runs the nightly inbox pickup: cron (minute hour day month weekday), UTC.
    nightly_cron: str = "0 2 * * *"
    #: Folder or ``s3://bucket/prefix/`` the nightly run takes new ``*.jsonl`` files from; off when unset.
    inbox: str | None = None
    #: Where picked-up inbox files are moved (folder or s3:// prefix); unset: ``processed/`` inside the inbox.
    processed: str | None = None
    #: Batch lines longer than this (bytes) are reported as bad lines, never read whole into memory.
    batch_max_line_bytes: int = Field(default=64 * 1024, ge=1024)
    #: How often beat runs the reconciler.
    reconcile_interval_s: float = Field(default=60.0, gt=0)
    #: A job ``submitting`` this long has lost its submit worker (submit's hard time limit is 120 s).
    reconcile_submitting_stale_s: float = Field(default=300.0, ge=0)
    #: A ``generating`` job whose lease was last renewed this long ago has no poll following it.
    reconcile_poll_silent_s: float = Field(default=180.0, ge=0)
    #: A ``downloading`` job this long without a running store (no store claim) gets a new ``store``.
    reconcile_store_silent_s: float = Field(default=600.0, ge=0)
    #: A ``timed_out`` job's task is asked again this often for a late success...
    reconcile_salvage_interval_s: float = Field(default=600.0, ge=0)
    #: ...for this long after the job failed (the result URL lives 24 h from completion).
    reconcile_salvage_window_s: float = Field(default=82800.0, ge=0)
    #: Jobs the reconciler looks at per case and run (the rest wait for the next run).
    reconcile_limit: int = Field(default=500, ge=1)
    #: A queued job this old with no live submit message gets a new one (two scans a run apart).
    reconcile_lost_min_age_s: float = Field(default=300.0, ge=0)
    #: Beat's Redis lock (celery-redbeat): a standby beat takes over this long after the active one died.
    beat_lock_timeout_s: int = Field(default=60, ge=2)
    # -- end of batch, schedule and reconciler settings ------------------------------------------------

    # -- Logging (workers/logs.py) ------------------------------------------------------------
    #: ``text`` (human-readable lines) or ``json`` (one JSON object per line, for log shippers).
    log_format: Literal["text", "json"] = "text"
    #: Root log level. Unset: Celery's ``-l`` for workers and beat, INFO for the web, WARNING for the CLI.
    log_level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] | None = None
    # -- end of logging settings ------------------------------------------------------------------------

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return check_redis_url(value)

    @field_validator("ingress_tokens", "ops_tokens")
    @classmethod
    def _strong_tokens(cls, value: list[SecretStr]) -> list[SecretStr]:
        for index, token in enumerate(value):
            try:
                strong_token(token)
            except ValueError as error:
                raise ValueError(f"token {index}: {error}") from None
        return value

    @field_validator("web_trusted_proxies")
    @classmethod
    def _proxies(cls, value: list[str]) -> list[str]:
        return check_networks(value)

    @model_validator(mode="after")
    def _principals_apart(self) -> Settings:
        """Names and tokens say who a caller is: each may stand for one principal only."""
        names = [principal.name for principal in self.ingress_principals]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"ingress principal names must be unique; repeated: {repeated}")
        if self.ingress_tokens and LEGACY_PRINCIPAL in names:
            raise ValueError(
                f"no ingress principal may be named {LEGACY_PRINCIPAL!r} while ingress_tokens are set "
                f"(each plain token is the admin principal {LEGACY_PRINCIPAL!r})"
            )
        fingerprints = [principal.fingerprint for principal in self.principals()]
        if len(set(fingerprints)) != len(fingerprints):
            raise ValueError("every ingress token must be different (one token, one principal)")
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_name(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("nightly_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from celery.schedules import crontab

        parts = value.split()
        if len(parts) != 5:
            raise ValueError("must have 5 fields: minute hour day-of-month month day-of-week")
        try:
            crontab(*parts)
        except (ValueError, TypeError) as error:
            raise ValueError(f"not a valid cron expression ({error})") from None
        return " ".join(parts)

    @model_validator(mode="after")
    def _inbox_apart_from_processed(self) -> Settings:
        if self.processed and self.inbox and self.processed.rstrip("/") == self.inbox.rstrip("/"):
            raise ValueError("processed must differ from inbox (files would be picked up again)")
        return self

    @model_validator(mode="after")
    def _default_account(self) -> Settings:
        if not self.accounts and self.api_key is not None:
            self.accounts = [AccountSettings(name="default", api_key=self.api_key, base_url=self.upstream_base_url)]
        names = [account.name for account in self.accounts]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"account names must be unique; repeated: {duplicates}")
        return self

    def account(self, name: str) -> AccountSettings:
        return account_named({account.name: account for account in self.accounts}, name)

    def principals(self) -> list[PrincipalSettings]:
        """Every principal of the ingress: the configured ones, and ``default`` (admin) per plain token
        (one principal with several tokens: one entry per token)."""
        legacy = [PrincipalSettings(name=LEGACY_PRINCIPAL, token=token, admin=True) for token in self.ingress_tokens]
        return [*self.ingress_principals, *legacy]

    def principal(self, name: str) -> PrincipalSettings | None:
        """The principal called ``name`` (for ``default``, its first token's entry), or None."""
        return next((principal for principal in self.principals() if principal.name == name), None)

    def result_hosts(self) -> list[str]:
        """The allowed result hosts: the configured ones and the hosts of the accounts' base URLs."""
        from urllib.parse import urlsplit

        hosts = list(self.downloads.result_hosts)
        for account in self.accounts:
            parts = urlsplit(account.base_url)
            if parts.hostname:
                host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
                host = f"{host}:{parts.port}" if parts.port else host
                if host not in hosts:
                    hosts.append(host)
        return hosts

    def require_accounts(self) -> list[AccountSettings]:
        """The accounts, or a ConfigError for processes that talk to the upstream."""
        if not self.accounts:
            raise ConfigError(
                "Invalid configuration:\n  accounts: no upstream account configured; "
                "set IMAGINEQ_API_KEY or IMAGINEQ_ACCOUNTS"
            )
        return self.accounts


def account_named(accounts: Mapping[str, AccountSettings], name: str) -> AccountSettings:
    """The account called ``name`` (``accounts`` by name); ConfigError naming the configured ones if none."""
    try:
        return accounts[name]
    except KeyError:
        raise ConfigError(f"unknown account {name!r}; configured: {list(accounts)}") from None


REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")


def sentinel_nodes(url: str) -> list[tuple[str, int]] | None:
    """The (host, port) of every Sentinel of a ``sentinel://`` URL list; None for any other URL."""
    if not url.startswith("sentinel://"):
        return None
    nodes = []
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        nodes.append((parts.hostname or "localhost", parts.port or 26379))
    return nodes


def check_redis_url(value: str) -> str:
    """``value`` if it is a Redis URL redis-py can connect with, else ValueError saying what is wrong."""
    if value.startswith("sentinel://"):
        for part in value.split(";"):
            if not part.strip().startswith("sentinel://"):
                raise ValueError("a Sentinel list is sentinel://host:port;sentinel://host:port;...")
            _check_url(part.strip())
        return value
    return _check_url(value)


def _check_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in REDIS_SCHEMES:
        shown = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise ValueError(f"must be a redis://, rediss://, unix:// or sentinel:// URL, not {shown}")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket's path (unix:///path/to/redis.sock)")
        return value
    if not parts.hostname:
        raise ValueError("needs a host (redis://host:6379/0)")
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ValueError(f"the database (the path) must be a number, not {database!r}")
    return value


def redact_url(url: str) -> str:
    """The URL without user info, query string and fragment: safe to show or log (no password, no
    presigned signature). Every URL ImagineQ prints goes through here (a Sentinel list part by part)."""
    if url.startswith("sentinel://") and ";" in url:
        return ";".join(redact_url(part.strip()) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
    except ValueError:
        return "<unparseable URL>"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _describe(error: ValidationError) -> str:
    lines = ["Invalid configuration:"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "settings"
        env_name = f"IMAGINEQ_{str(item['loc'][0]).upper()}" if item["loc"] else "IMAGINEQ_*"
        value = item.get("input")
        secret = any(word in field.lower() for word in ("key", "secret", "token", "password"))
        if isinstance(value, str) and "url" in field.lower():
            value = redact_url(value)
        shown = "" if secret or isinstance(value, dict | list) else f" (got {value!r})"
        lines.append(f"  {field} [{env_name}]: {item['msg']}{shown}")
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (plus ``overrides``); raise ConfigError listing every bad field."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, built once (entry points only: Celery app, CLI, web)."""
    return load_settings()
