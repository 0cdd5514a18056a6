"""The one typed settings object.

Every value comes from environment variables prefixed ``IMAGINEQ_`` (nested fields use ``__``, e.g.
``IMAGINEQ_S3__BUCKET``) or from an optional ``.env`` file. This is the only module that reads the
environment; everything else receives a ``Settings`` (or a part of it) explicitly.

Accounts are given either as a JSON list in ``IMAGINEQ_ACCOUNTS`` or, for the common single-account case,
with ``IMAGINEQ_API_KEY`` (+ ``IMAGINEQ_UPSTREAM_BASE_URL``), which becomes an account named ``default``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from config.errors import ConfigError
from config.ingress import (
    EVENT_TYPES,
    LEGACY_PRINCIPAL,
    DashboardSettings,
    NotifySettings,
    PrincipalSettings,
    WebhookEndpoint,
    strong_token,
    token_fingerprint,
)
from config.models import check_networks
from config.redis_url import check_redis_url, redact_url, sentinel_nodes
from config.storage import DownloadSettings, S3Settings
from config.upstream import (
    DEFAULT_BASE_URL,
    AccountSettings,
    CallbackSettings,
    CreditSettings,
    HttpSettings,
    ModelSettings,
    PollSettings,
    PoolLimits,
    account_named,
)

#: The settings' public names: the parts are defined in the modules beside this one, and read from here.
__all__ = [
    "DEFAULT_BASE_URL",
    "EVENT_TYPES",
    "LEGACY_PRINCIPAL",
    "AccountSettings",
    "CallbackSettings",
    "ConfigError",
    "CreditSettings",
    "DashboardSettings",
    "DownloadSettings",
    "HttpSettings",
    "ModelSettings",
    "NotifySettings",
    "PollSettings",
    "PoolLimits",
    "PrincipalSettings",
    "S3Settings",
    "Settings",
    "WebhookEndpoint",
    "account_named",
    "get_settings",
    "load_settings",
    "redact_url",
    "sentinel_nodes",
    "strong_token",
    "token_fingerprint",
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IMAGINEQ_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        use_attribute_docstrings=True,
        # An empty variable is an unset one (docker compose passes ${OPTIONAL:-} through as "").
        env_ignore_empty=True,
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    """``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS) or ``unix:///path/to/socket``; or Sentinel:
    ``sentinel://[:password@]host:26379[/db];sentinel://host2:26379;...`` (kombu's form: the password is the data
    nodes'), with ``redis_sentinel_master`` naming the primary to follow.
    """
    redis_sentinel_master: str = Field(default="mymaster", min_length=1, max_length=128)
    """The master name the Sentinels know the primary by (``sentinel monitor <name> ...``)."""
    redis_sentinel_password: SecretStr | None = None
    """The Sentinels' own password (``requirepass`` of the sentinel processes), when they have one."""
    redis_prefix: str = Field(default="iq", pattern=r"^[A-Za-z0-9_.-]+$")
    """Key prefix for every Redis key ImagineQ owns (several deployments can share a Redis)."""

    accounts: list[AccountSettings] = []
    """The upstream accounts (API keys), a JSON list of ``{name, api_key, base_url, max_in_progress,
    max_creations_per_window, creation_window_s, record_info_per_s, in_progress_margin, creations_margin}``;
    when set, ``api_key`` is not used.
    """
    api_key: SecretStr | None = None
    """Shortcut for one account named ``default``."""
    upstream_base_url: str = DEFAULT_BASE_URL
    """The upstream API base of the account ``api_key`` makes."""

    models: dict[str, ModelSettings] = Field(default_factory=dict)
    """The models of the family this deployment takes, by name (``text-to-video``, ``image-to-video``,
    ``text-to-image``, ``image-to-image``, ``upscale``, ``extend``): switched off, their pools' default caps,
    their prices. A model not named takes the catalog's defaults."""
    credits: CreditSettings = CreditSettings()
    """Estimates, the ledger, budgets and balances (``IMAGINEQ_CREDITS__*``)."""
    s3: S3Settings = S3Settings()
    """Where results are stored (``IMAGINEQ_S3__*``)."""
    callbacks: CallbackSettings = CallbackSettings()
    """The upstream's callbacks to the web (``IMAGINEQ_CALLBACKS__*``)."""
    poll: PollSettings = PollSettings()
    """When tasks are asked about (``IMAGINEQ_POLL__*``)."""
    http: HttpSettings = HttpSettings()
    """The HTTP client of the upstream and S3 (``IMAGINEQ_HTTP__*``)."""
    downloads: DownloadSettings = DownloadSettings()
    """Which result URLs a store may fetch, and how slow a transfer may be (``IMAGINEQ_DOWNLOADS__*``)."""

    job_ttl_s: int = Field(default=30 * 86400, ge=60)
    """How long terminal job records are kept."""
    quota_wait_max_s: float = Field(default=20.0, gt=0)
    """Longest a submit task waits in-process for quota before re-publishing the job."""
    submit_rate_limit: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?/[smh]$")
    """Celery ``rate_limit`` of the submit task per worker (e.g. "3/s"; "0/s": none, as when benchmarking with the
    quotas lifted); default derived from the accounts.
    """
    poll_rate_limit: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?/[smh]$")
    """Celery ``rate_limit`` of the poll task per worker; default: the accounts' recordInfo rate."""
    pause_check_interval_s: float = Field(default=30.0, gt=0)
    """How often one submitter re-checks a paused account's credits (it resumes when they return)."""
    visibility_timeout_s: int = Field(default=3600, ge=60)
    """Broker visibility timeout; must exceed every task time limit and countdown."""
    quota_lease_ttl_s: float = Field(default=120.0, ge=1)
    """An in-progress lease lasts this long unless a poll renews it (a dead worker frees its slot then)."""
    unknown_outcome_grace_s: float = Field(default=900.0, ge=0)
    """After an unknown createTask outcome the job's slot stays taken this long (the task may run)."""
    worker_max_memory_per_child_mb: int = Field(default=512, ge=64)
    """A worker pool process is replaced after its current task once its RSS passes this (MiB): a bound on slow
    growth in long-lived processes (see the operating notes in the docs).
    """
    worker_max_tasks_per_child: int = Field(default=10_000, ge=1)
    """...and after this many tasks, whatever its size."""
    fair_share_aging_s: float = Field(default=600.0, gt=0)
    """A batch job (or one below interactive priority) queued longer than this is served in the interactive class,
    as if it had just arrived there, so no backlog starves behind a steady stream of interactive work."""
    parent_max_age_s: float = Field(default=14 * 86400, gt=0)
    """A derived job takes a parent's upstream task only while it is younger than this (stored this long ago at
    most): the upstream keeps a task's files about two weeks. An older parent fails its child ``parent_too_old``."""
    workflow_max_nodes: int = Field(default=50, ge=1, le=500)
    """The most jobs one workflow may hold."""
    upload_reuse_s: float = Field(default=2.5 * 86400, gt=0)
    """An image uploaded to an account's upstream file store is named again by later jobs for this long, then
    uploaded again: the store deletes files after 3 days, and a task must find its image there."""
    quota_enforce: bool = True
    """Enforce the global Redis quotas. Off only for the benchmark's naive baseline (rate_limit alone)."""
    replica_acks: int = Field(default=-1, ge=-1, le=10)
    """Replicas that must hold a write before it is relied on (Redis ``WAIT``), so a failover cannot forget it: a new
    quota slot (its creation-log entry and lease) before createTask is sent, and new jobs before the producer is
    told they are accepted. -1 (default) one when the primary has a replica connected, else none; 0 never waits; N
    that many.
    """
    quota_replica_ack_timeout_ms: int = Field(default=200, ge=1, le=10_000)
    """How long an acquire waits for them; without them in time the slot goes back and the job waits."""
    enqueue_replica_ack_timeout_ms: int = Field(default=1000, ge=0, le=60_000)
    """How long an enqueue waits for them (0: it does not wait). Without them in time see
    ``enqueue_unacknowledged``. A submit's createTask marker waits as long; unacknowledged, createTask is not sent
    and the job goes back to the queue.
    """
    enqueue_unacknowledged: Literal["refuse", "accept"] = "refuse"
    """New jobs no replica acknowledged in time: ``refuse`` takes them back and the producer gets a retryable error
    (HTTP 503, ``NotReplicated``), since a primary cut off from its replicas would lose them at the failover;
    ``accept`` keeps them with a warning (a failover in the next moment could forget them)."""

    # -- HTTP ingress: the ``web`` process (producers/web/) ------------------------------------------
    ingress_principals: list[PrincipalSettings] = []
    """Named principals of the ingress (JSON list of {name, token, admin, limits...}): each sees only its own jobs
    unless ``admin``. With none (and no ``ingress_tokens``) every ``/v1/jobs`` request is refused (401): the
    ingress is never open by accident.
    """
    ingress_tokens: list[SecretStr] = []
    """Bearer tokens of a single-tenant deployment: each is the admin principal ``default``, which sees every job
    (JSON list in ``IMAGINEQ_INGRESS_TOKENS``). Use ``ingress_principals`` for tenants.
    """
    ingress_max_body_bytes: int = Field(default=16 * 1024**2, ge=1024)
    """Largest request body the web process reads (413 beyond); fits 1,000 jobs with long prompts."""
    ops_tokens: list[SecretStr] = []
    """Bearer tokens for the operational endpoints: ``/metrics`` needs one; ``/healthz`` answers its status to anyone
    (for probes) and its details (Redis, worker names) only with one.
    """
    docs_enabled: bool = False
    """Serve the interactive API docs (``/docs``, from local files) and ``/openapi.json``."""
    dashboard: DashboardSettings = DashboardSettings()
    """The jobs dashboard (``IMAGINEQ_DASHBOARD__*``)."""
    notify: NotifySettings = NotifySettings()
    """Outbound webhooks (``IMAGINEQ_NOTIFY__*``)."""
    redis_memory_budget_pct: float = Field(default=90.0, gt=0, le=100)
    """New jobs are refused (503, nothing written) while Redis uses more than this share of its ``maxmemory`` (read
    from the server; no check when it has none): room is kept for the work in flight, the broker and the quotas,
    which must never meet a full Redis.
    """
    events_max_len: int = Field(default=100_000, ge=1000)
    """Entries the events stream keeps (``GET /v1/events``, ``imagineq watch``), about: a client away for longer than
    that many job endings is told it missed some (an ``events-lost`` event).
    """
    web_header_timeout_s: float = Field(default=10.0, gt=0)
    """A request's headers must be complete this long after its connection opened (or the last response)."""
    web_body_timeout_s: float = Field(default=30.0, gt=0)
    """...and its body this long after its headers: a client that announces a body and never sends it holds a
    connection no longer than this.
    """
    web_max_connections_per_client: int = Field(default=32, ge=1)
    """Connections one client address may hold open to one web process at once (beyond: closed at once), so no single
    client can take the process's ``--limit-concurrency``. Trusted proxies are exempt.
    """
    web_trusted_proxies: list[str] = []
    """Proxies (addresses or CIDR) in front of the web whose ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are
    believed: the client's address and scheme (for limits, the Secure cookie and the dashboard's origin check) are
    then the ones they forward. Nobody's by default.
    """
    web_auth_failures_per_min: int = Field(default=10, ge=1)
    """Failed sign-ins and unknown bearer tokens one client address may send per minute (and at once); past that
    every request of that address with a token answers 429 until the minute has refilled.
    """
    health_workers_cache_s: float = Field(default=10.0, ge=0)
    """How long ``/healthz`` reuses its last worker ping (a ping waits up to 0.5 s for replies)."""
    early_callback_ttl_s: int = Field(default=3600, ge=60)
    """How long the web keeps a callback that arrived before submit recorded the taskId."""
    # -- end of HTTP ingress settings -------------------------------------------------------------------

    # -- Batches, the nightly schedule and the reconciler ------------------------------------
    nightly_cron: str = "0 2 * * *"
    """When beat runs the nightly inbox pickup: cron (minute hour day month weekday), UTC."""
    inbox: str | None = None
    """Folder or ``s3://bucket/prefix/`` the nightly run takes new ``*.jsonl`` files from; off when unset."""
    processed: str | None = None
    """Where picked-up inbox files are moved (folder or s3:// prefix); unset: ``processed/`` inside the inbox."""
    batch_max_line_bytes: int = Field(default=64 * 1024, ge=1024)
    """Batch lines longer than this (bytes) are reported as bad lines, never read whole into memory."""
    reconcile_interval_s: float = Field(default=60.0, gt=0)
    """How often beat runs the reconciler."""
    reconcile_submitting_stale_s: float = Field(default=300.0, ge=0)
    """A job ``submitting`` this long has lost its submit worker (submit's hard time limit is 120 s)."""
    reconcile_poll_silent_s: float = Field(default=180.0, ge=0)
    """A ``generating`` job whose lease was last renewed this long ago has no poll following it."""
    reconcile_store_silent_s: float = Field(default=600.0, ge=0)
    """A ``downloading`` job this long without a running store (no store claim) gets a new ``store``."""
    reconcile_salvage_interval_s: float = Field(default=600.0, ge=0)
    """A ``timed_out`` job's task is asked again this often for a late success..."""
    reconcile_salvage_window_s: float = Field(default=82800.0, ge=0)
    """...for this long after the job failed (the result URL lives 24 h from completion)."""
    reconcile_limit: int = Field(default=500, ge=1)
    """Jobs the reconciler looks at per case and run (the rest wait for the next run)."""
    reconcile_lost_min_age_s: float = Field(default=300.0, ge=0)
    """A queued job this old with no live submit message gets a new one (two scans a run apart)."""
    beat_lock_timeout_s: int = Field(default=60, ge=2)
    """Beat's Redis lock (celery-redbeat): a standby beat takes over this long after the active one died."""
    # -- end of batch, schedule and reconciler settings ------------------------------------------------

    # -- Logging (workers/logs.py) ------------------------------------------------------------
    log_format: Literal["text", "json"] = "text"
    """``text`` (human-readable lines) or ``json`` (one JSON object per line, for log shippers)."""
    log_level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] | None = None
    """Root log level. Unset: Celery's ``-l`` for workers and beat, INFO for the web, WARNING for the CLI."""
    # -- end of logging settings ------------------------------------------------------------------------

    alive_file: str | None = Field(default=None, max_length=4096)
    """A file workers (each event heartbeat) and beat (each tick) touch while their main loop runs, for a
    liveness probe: ``python -m workers.liveness --max-age 120``. Unset: none is written."""

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
