"""The upstream: its accounts and their quotas, the HTTP client, polls and callbacks."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, SecretStr, field_validator, model_validator

from config.errors import ConfigError
from config.models import FrozenSettingsModel, SettingsModel, secret_not_blank

DEFAULT_BASE_URL = "https://api.apikley.ru"


class PoolLimits(FrozenSettingsModel):
    """One account's caps for one model's pool, where they are not the model's defaults."""

    max_in_progress: int | None = Field(default=None, ge=1)
    """Tasks of the pool's model not yet terminal."""
    max_creations_per_window: int | None = Field(default=None, ge=1)
    """Creations of the pool's model per rolling window."""


class AccountSettings(FrozenSettingsModel):
    """One upstream account (API key) and its quotas."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    """The account's name (in job records, logs and metrics; never its key)."""
    api_key: SecretStr
    """The account's API key (secret)."""
    base_url: str = DEFAULT_BASE_URL
    """The upstream API base."""
    upload_base_url: str | None = None
    """The base of the upstream's file upload API (image inputs go there first); unset: ``base_url`` +
    ``/file-upload``, as Apikley serves it."""
    max_in_progress: int = Field(default=30, ge=1)
    """Upstream cap on text-to-video tasks not yet terminal."""
    max_creations_per_window: int = Field(default=300, ge=1)
    """Upstream cap on text-to-video creations per rolling window."""
    pools: dict[str, PoolLimits] = Field(default_factory=dict)
    """The caps of the other models' pools (``image-to-video``, ``text-to-image``, ...) where they are not the
    models' defaults (``models``), e.g. ``{"text-to-image": {"max_in_progress": 40}}``."""
    low_balance: float | None = Field(default=None, ge=0)
    """Below this many credits the account is low (an ``account.low_balance`` event, the dashboard, an alert);
    unset: ``credits.low_balance``."""
    create_requests_per_window: int | None = Field(default=None, ge=1)
    """createTask requests of every model together in every rolling ``create_requests_window_s``; unset: not
    limited. kie.ai documents about 20 new generation requests per 10 seconds per account."""
    create_requests_window_s: float = Field(default=10.0, gt=0)
    """The window of ``create_requests_per_window`` (``window_guard_s`` is added on our side, as to the creation
    window)."""
    creation_window_s: float = Field(default=3600.0, gt=0)
    """Length of the rolling creation window (the upstream's is an hour)."""
    window_guard_s: float = Field(default=2.0, ge=0)
    """Added to the window on our side: our log records a creation just *before* createTask is sent, the upstream
    just after it arrives, so without a guard a slot reopens a few ms early.
    """
    record_info_per_s: float = Field(default=10.0, gt=0)
    """recordInfo calls per second allowed for this key, in every rolling second."""
    record_info_guard_s: float = Field(default=0.2, ge=0)
    """Added to each rolling second on our side: a call is logged just before it is sent, the upstream counts it when
    it arrives, and two calls' trips differ by a few ms (more on a busy machine).
    """
    in_progress_margin: int = Field(default=0, ge=0)
    """Slots left free for other clients sharing the account."""
    creations_margin: int = Field(default=0, ge=0)
    """Creations per window left to other clients sharing the account."""

    _key_not_blank = field_validator("api_key")(secret_not_blank)

    @field_validator("base_url", "upload_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
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
    def upload_base(self) -> str:
        return (self.upload_base_url or f"{self.base_url}/file-upload").rstrip("/")

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


class ModelSettings(SettingsModel):
    """One model of the family as this deployment uses it (every field unset: the catalog's default)."""

    enabled: bool = True
    """Take jobs of this model (a model switched off is refused at enqueue, naming the setting)."""
    max_in_progress: int | None = Field(default=None, ge=1)
    """The pool's in-progress cap per account (text-to-video: the accounts' ``max_in_progress``)."""
    max_creations_per_window: int | None = Field(default=None, ge=1)
    """The pool's creations per window per account (text-to-video: ``max_creations_per_window``)."""
    credits_per_task: float | None = Field(default=None, ge=0)
    """The estimate of one task, before the per-second part."""
    credits_per_second: dict[str, float] | None = None
    """Credits per second of video by resolution (``{"480p": 2.4, "720p": 4.5}``)."""


class CreditSettings(SettingsModel):
    """What jobs cost: the ledger, the budgets that refuse work before it is spent, the accounts' balances."""

    principal_day: float | None = Field(default=None, gt=0)
    """Credits each principal may spend (charged and reserved) per UTC day, unless its own ``budget_day`` says
    otherwise; the jobs of no principal (the Python API, the CLI, batch files) count as principal ``-``. Unset:
    no limit."""
    principal_month: float | None = Field(default=None, gt=0)
    """...and per UTC month (``budget_month``)."""
    daily_cap: float | None = Field(default=None, gt=0)
    """Credits the whole deployment may spend per UTC day, everyone's together."""
    inbox_batch_budget: float | None = Field(default=None, gt=0)
    """The budget of each batch the nightly inbox run picks up (a file's header line may set its own)."""
    warn_pct: float = Field(default=80.0, gt=0, le=100)
    """A budget this full sends one ``budget.warning`` event (and webhook) per period."""
    ledger_days: int = Field(default=400, ge=1)
    """How long the ledger keeps each day's and month's totals (and each batch's)."""
    balance_interval_s: float = Field(default=60.0, ge=5)
    """How often beat reads every account's balance (``chat/credit``); also read after any 402."""
    low_balance: float = Field(default=100.0, ge=0)
    """Below this many credits an account is low, unless its own ``low_balance`` says otherwise."""


class CallbackSettings(SettingsModel):
    public_base_url: str | None = None
    """Public base URL of the ``web`` process; callbacks are off when unset."""
    hmac_key: SecretStr | None = None
    """The key callbacks are signed with (``X-Webhook-Signature``); unset: signatures are not checked."""
    max_age_s: int = Field(default=300, ge=1)
    """Reject signed callbacks whose timestamp is older than this."""

    @property
    def enabled(self) -> bool:
        return self.public_base_url is not None


class PollSettings(SettingsModel):
    """When to ask recordInfo (ARCHITECTURE.md, "Polls"): the poll planner spends each account's budget
    on the tasks that may have finished, within these bounds."""

    first_check_s: float | None = Field(default=None, ge=0)
    """No task is asked about before it is this old; unset: its model's shortest typical generation time
    (10 s for text-to-video, 5 s for text-to-image)."""
    schedule: list[tuple[float, float]] = Field(
        default_factory=lambda: [(30.0, 1.0), (120.0, 5.0), (float("inf"), 15.0)]
    )
    """``(until_s, interval_s)`` steps: a task younger than ``until_s`` is asked about at most every ``interval_s``
    (the budget decides how often within that). Past the first steps this is the upstream's suggested back-off for
    long tasks (5–10 s until 2 min, 15–30 s after).
    """
    deadline_s: float = Field(default=900.0, gt=0)
    """Give up (``failed(timed_out)``) when the task is older than this."""
    safety_first_s: float = Field(default=45.0, gt=0)
    """With callbacks on, polling is a safety net: first check this late, then at ``safety_interval_s``."""
    safety_interval_s: float = Field(default=30.0, gt=0)
    """With callbacks on, a task is then asked about at most this often."""

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


class HttpSettings(SettingsModel):
    connect_timeout_s: float = Field(default=5.0, gt=0)
    """Connect timeout of every call to the upstream and S3."""
    read_timeout_s: float = Field(default=30.0, gt=0)
    """Read timeout of every call to the upstream and S3."""
    download_read_timeout_s: float = Field(default=60.0, gt=0)
    """Read timeout between chunks of a result download."""
    user_agent: str = "Mozilla/5.0 (compatible; ImagineQ/0.1; +https://github.com/imagineq)"
    """The User-Agent sent (a bot-like one gets Cloudflare's 403 "error code: 1010")."""


def account_named(accounts: Mapping[str, AccountSettings], name: str) -> AccountSettings:
    """The account called ``name`` (``accounts`` by name); ConfigError naming the configured ones if none."""
    try:
        return accounts[name]
    except KeyError:
        raise ConfigError(f"unknown account {name!r}; configured: {list(accounts)}") from None
